"""Configs: every option and overlay combination composes and validates; bad values fail naming
the key; run dirs never collide."""

import itertools
from datetime import timedelta

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from charrnn.errors import CharRNNError
from charrnn.run.config import validate_train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = {g: _options(g) for g in ("data", "model", "size", "optimizer", "trainer")}
OVERLAYS = {g: ["null", *_options(g)] for g in ("scheduler", "experiment", "debug")}


def test_every_option_and_every_overlay_combination_composes_and_validates():
    """Each overlay combination (scheduler × experiment × debug) once, the other groups cycled
    along (option i % n of each in combination i): every option of every group composes and
    validates, under several overlays each."""
    overlay_combos = list(itertools.product(*OVERLAYS.values()))
    assert len(overlay_combos) >= max(len(options) for options in GROUPS.values())
    seen = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for i, overlay in enumerate(overlay_combos):
            chosen = {g: opts[i % len(opts)] for g, opts in GROUPS.items()}
            chosen |= dict(zip(OVERLAYS, overlay, strict=True))
            overrides = [f"{g}={o}" for g, o in chosen.items() if o != "null"]  # null: default
            cfg = compose("train", overrides=overrides)
            validate_train(cfg)
            assert cfg.model.cell == ("lstm" if chosen["model"] == "lstm" else "gru")
            if chosen["experiment"] == "null":
                size = OmegaConf.load(CONF / "size" / f"{chosen['size']}.yaml")
                assert cfg.model.rnn_units == size.rnn_units
            seen.update(chosen.items())
    assert seen == {(g, o) for g, opts in (GROUPS | OVERLAYS).items() for o in opts}


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_groups_change_what_they_should():
    cfg = _cfg("experiment=tutorial")
    assert (cfg.model.cell, cfg.model.embedding_dim, cfg.model.rnn_units) == ("gru", 256, 1024)
    assert (cfg.data.seq_length, cfg.data.batch_size, cfg.trainer.max_epochs) == (100, 64, 20)
    assert cfg.optimizer.lr == 0.001 and cfg.trainer.gradient_clip_val is None
    assert _cfg("model=lstm", "size=tiny").model.cell == "lstm"
    assert _cfg("data=stateful").data.stateful is True
    assert _cfg("trainer=gpu").trainer.precision == "bf16-mixed"
    cfg = _cfg("model.rnn_units=1024", "trainer.precision=bf16-mixed", "trainer.accelerator=auto")
    assert (cfg.model.rnn_units, cfg.trainer.precision) == (1024, "bf16-mixed")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.rnn_units=0", "model.rnn_units: 0 is not allowed; use a whole number > 0"),
        ("model.num_layers=-1", "model.num_layers: -1"),
        ("model.embedding_dim=2.5", "model.embedding_dim: 2.5"),
        ("model.dropout=1.0", "model.dropout: 1.0 is not allowed; use a probability in \\[0, 1\\)"),
        ("model.weight_drop=-0.1", "model.weight_drop: -0.1 is not allowed; use a probability"),
        ("model.locked_dropout=2", "model.locked_dropout: 2 is not allowed; use true or false"),
        (
            "data.val_frac=0",
            "data.val_frac: 0 is not allowed; use a fraction strictly between 0 and 1",
        ),
        ("data.val_frac=1.5", "data.val_frac: 1.5"),
        ("data.seq_length=0", "data.seq_length: 0"),
        (
            "trainer.precision=8-bit",
            "trainer.precision: '8-bit' is not allowed; choose one of auto, 32-true",
        ),
        ("trainer.accelerator=abacus", "trainer.accelerator: 'abacus'"),
        ("optimizer.lr=-1", "optimizer.lr: -1"),
        (
            "data.sha256=abc",
            "data.sha256: 'abc' is not allowed; use the file's 64-hex-digit sha256",
        ),
    ],
)
def test_bad_values_fail_naming_key_and_allowed_values(override, message):
    with pytest.raises(CharRNNError, match=message):
        validate_train(_cfg(override))


def test_runs_started_in_the_same_second_get_their_own_dirs(monkeypatch):
    """Two runs (and two sweeps) started 1 ms apart, within one second, get two dirs."""
    import hydra.core.utils

    real = hydra.core.utils.datetime
    calls = itertools.count()

    class Clock(real):  # Hydra's ${now:} resolver reads this clock: 1 ms later at every call
        @classmethod
        def now(cls, tz=None):
            return real(2024, 5, 1, 12, 0, 0) + timedelta(milliseconds=next(calls))

    monkeypatch.setattr(hydra.core.utils, "datetime", Clock)
    dirs = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for _ in range(2):
            cfg = compose("train", return_hydra_config=True)
            dirs.append((cfg.hydra.run.dir, cfg.hydra.sweep.dir))
    (run_a, sweep_a), (run_b, sweep_b) = dirs
    assert run_a.startswith("outputs/runs/2024-05-01_12-00-00") and run_a != run_b
    assert sweep_a.startswith("outputs/multirun/2024-05-01_12-00-00") and sweep_a != sweep_b

"""Configs: every combination of the groups composes and validates; bad values fail naming the key."""

import itertools

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


def test_every_option_composes_and_validates_under_every_overlay_combination():
    """All overlay combinations (scheduler × experiment × debug) × every option of every other group.

    The other groups are cycled together (option i of each) so every option meets every overlay
    combination; the full product would take minutes for no extra coverage of interactions.
    """
    overlay_combos = list(itertools.product(*OVERLAYS.values()))
    rounds = max(len(options) for options in GROUPS.values())
    seen = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overlay in overlay_combos:
            for i in range(rounds):
                chosen = {g: opts[i % len(opts)] for g, opts in GROUPS.items()}
                chosen |= dict(zip(OVERLAYS, overlay, strict=False))
                overrides = [
                    f"{g}={o}" for g, o in chosen.items() if o != "null"
                ]  # null: the default
                cfg = compose("train", overrides=overrides)
                validate_train(cfg)
                assert cfg.model.cell == ("lstm" if chosen["model"] == "lstm" else "gru")
                if chosen["experiment"] == "null":
                    assert (
                        cfg.model.rnn_units
                        == OmegaConf.load(CONF / "size" / f"{chosen['size']}.yaml").rnn_units
                    )
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
        ("model.cell=rnn", "model.cell: 'rnn' is not allowed; choose one of gru, lstm"),
        ("model.rnn_units=0", "model.rnn_units: 0 is not allowed; use a whole number > 0"),
        ("model.num_layers=-1", "model.num_layers: -1"),
        ("model.embedding_dim=2.5", "model.embedding_dim: 2.5"),
        ("model.dropout=1.0", "model.dropout: 1.0 is not allowed; use a probability in \\[0, 1\\)"),
        (
            "data.val_frac=0",
            "data.val_frac: 0 is not allowed; use a fraction strictly between 0 and 1",
        ),
        ("data.val_frac=1.5", "data.val_frac: 1.5"),
        ("data.seq_length=0", "data.seq_length: 0"),
        (
            "trainer.precision=8-bit",
            "trainer.precision: '8-bit' is not allowed; choose one of 32-true",
        ),
        ("trainer.accelerator=abacus", "trainer.accelerator: 'abacus'"),
        ("optimizer.lr=-1", "optimizer.lr: -1"),
    ],
)
def test_bad_values_fail_naming_key_and_allowed_values(override, message):
    with pytest.raises(CharRNNError, match=message):
        validate_train(_cfg(override))


def test_run_dirs_are_unique_within_a_second():
    text = (CONF / "train.yaml").read_text()
    assert "dir: outputs/runs/${now:%Y-%m-%d_%H-%M-%S-%f}" in text  # microseconds in the name
    assert "dir: outputs/multirun/${now:%Y-%m-%d_%H-%M-%S-%f}" in text

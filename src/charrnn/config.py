"""Checks the composed config before anything runs, so a bad value fails in one line that names it."""

from __future__ import annotations

import math
import re

from omegaconf import DictConfig

from charrnn.errors import CharRNNError

# the keys of charrnn.model.CELLS, named here so that checking a config needs no torch import
CELLS = ("gru", "lstm")
IMPLS = ("auto", "torch", "fused")  # the RNN layer: auto = FusedGRU for GRUs, nn.LSTM for LSTMs

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise CharRNNError(f"{key}: {value!r} is not allowed; {allowed}")


def _positive_int(value, key: str) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        key,
        value,
        "use a whole number > 0",
    )


def validate_train(cfg: DictConfig) -> None:
    """Every user-facing value of a training config, checked against its allowed range."""
    model, data, trainer = cfg.model, cfg.data, cfg.trainer
    _require(model.cell in CELLS, "model.cell", model.cell, f"choose one of {', '.join(CELLS)}")
    impls = IMPLS if model.cell == "gru" else tuple(i for i in IMPLS if i != "fused")
    _require(
        model.get("impl", "auto") in impls,
        "model.impl",
        model.get("impl"),
        f"choose one of {', '.join(impls)} for model.cell={model.cell}",
    )
    for key in ("embedding_dim", "rnn_units", "num_layers"):
        _positive_int(model[key], f"model.{key}")
    for key in ("dropout", "emb_dropout", "out_dropout"):
        value = model[key]
        _require(
            isinstance(value, (int, float)) and 0 <= value < 1,
            f"model.{key}",
            value,
            "use a probability in [0, 1)",
        )
    for key in ("seq_length", "batch_size", "val_streams"):
        _positive_int(data[key], f"data.{key}")
    value = data.val_frac
    _require(
        isinstance(value, (int, float)) and 0 < value < 1,
        "data.val_frac",
        value,
        "use a fraction strictly between 0 and 1",
    )
    _require(
        str(trainer.precision) in PRECISIONS,
        "trainer.precision",
        trainer.precision,
        f"choose one of {', '.join(PRECISIONS)}",
    )
    _require(
        trainer.accelerator in ACCELERATORS,
        "trainer.accelerator",
        trainer.accelerator,
        f"choose one of {', '.join(ACCELERATORS)}",
    )
    epochs = trainer.get("max_epochs")
    _require(
        epochs is None or (isinstance(epochs, int) and (epochs > 0 or epochs == -1)),
        "trainer.max_epochs",
        epochs,
        "use a whole number > 0 (or -1 for no limit)",
    )
    lr = cfg.optimizer.get("lr")
    _require(
        isinstance(lr, (int, float)) and 0 < lr < math.inf, "optimizer.lr", lr, "use a number > 0"
    )
    clip = trainer.get("gradient_clip_val")
    _require(
        clip is None or (isinstance(clip, (int, float)) and clip > 0),
        "trainer.gradient_clip_val",
        clip,
        "use a number > 0, or null for no clipping",
    )
    threads = cfg.get("threads")
    _require(
        threads is None or (type(threads) is int and threads > 0),
        "threads",
        threads,
        "use a whole number > 0, or null for all cores",
    )
    sha = data.get("sha256")
    _require(
        sha is None or (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)),
        "data.sha256",
        sha,
        "use the file's 64-hex-digit sha256, or null to skip the check",
    )
    timeout = data.get("download_timeout")
    _require(
        isinstance(timeout, (int, float)) and timeout > 0,
        "data.download_timeout",
        timeout,
        "use a number of seconds > 0",
    )
    last = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
    every = last.get("every_n_train_steps")
    _require(
        every is None or (isinstance(every, int) and every > 0),
        "callbacks.last_checkpoint.every_n_train_steps",
        every,
        "use a whole number > 0, or null to write last.ckpt at epoch ends only",
    )
    for key in ("ckpt_path", "resume"):
        value = cfg.get(key)
        _require(value is None or isinstance(value, str), key, value, "use a path (or null)")


def compose_train(run_dir, *overrides: str) -> DictConfig:
    """The real train config composed from conf/ with `overrides`, as @hydra.main would hand it to
    a run whose output dir is `run_dir` (for tests and the benchmark, which build runs in-process)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True
        )
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a run sees its config without the hydra node, as under @hydra.main
    return cfg

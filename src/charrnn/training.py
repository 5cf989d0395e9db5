"""One training run from a composed config: build data, model, callbacks, loggers and Trainer; fit."""

from __future__ import annotations

import ctypes
import logging
import math
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from charrnn.callbacks import HParamsMetric
from charrnn.config import validate_train
from charrnn.data import CharDataModule
from charrnn.model import CharLM

log = logging.getLogger(__name__)

# Lightning prints through handlers of its own; route it through Hydra's (console + run-dir log file).
for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).handlers.clear()
    logging.getLogger(_name).propagate = True


def _plain(node) -> dict | None:
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def _flat_params(cfg: DictConfig) -> dict:
    """The run's hyperparameters as flat scalar key/values, for TensorBoard's HPARAMS view."""
    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            if key.startswith("_"):
                continue
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif isinstance(value, (int, float, str, bool)):
                flat[prefix + key] = value
            elif value is None:
                flat[prefix + key] = "null"

    groups = {k: _plain(cfg[k]) for k in ("data", "model", "optimizer", "trainer") if k in cfg}
    groups["scheduler"] = _plain(cfg.get("scheduler")) or {"name": "none"}
    walk("", {"seed": cfg.seed, **groups})
    return flat


def keep_freed_memory() -> None:
    """Has glibc keep freed memory for the next step instead of handing it back to the OS.

    By default glibc maps every allocation over 32 MB afresh and unmaps it when freed, so each CPU
    training step page-faults its activations in again: ~80,000 faults, a quarter of a GRU-1024
    step. The price: the process holds on to its peak memory until it exits.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GB from the reusable heap
    libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD (a C int): do not shrink the heap back


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The datamodule (set up, so the vocabulary is known), the LightningModule and the Trainer."""
    validate_train(cfg)
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: CharDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = CharLM(
        vocab=datamodule.vocab.chars,
        model=_plain(cfg.model),
        optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.get("scheduler")),
        stateful=cfg.data.stateful,
    )
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks.append(HParamsMetric(_flat_params(cfg)))
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def train(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> float:
    """Fits the model and returns the best val/loss (what Hydra sweepers minimise)."""
    datamodule, module, trainer = build(cfg)
    params = sum(p.numel() for p in module.parameters())
    log.info(
        "corpus %s: %d train + %d val characters, vocabulary %d; model %s, %s parameters",
        datamodule.corpus_path, len(datamodule.train_ids), len(datamodule.val_ids),
        datamodule.vocab.size, cfg.model.cell, f"{params:,}",
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    best = module.best_val_loss
    if trainer.is_global_zero:
        _report(trainer, best, run_dir, overrides or [])
    return best


def _report(trainer: L.Trainer, best: float, run_dir: Path | None, overrides: list[str]) -> None:
    lines = []
    if math.isfinite(best):
        lines.append(f"best val/loss {best:.4f} nats/char ({best / math.log(2):.4f} bits/char)")
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        lines.append(f"best checkpoint: {checkpoint.best_model_path}")
    if run_dir is not None:
        lines.append(f"run dir: {run_dir}")
        lines.append(f"TensorBoard: tensorboard --logdir {run_dir}")
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            kept = [o for o in overrides if not o.startswith("ckpt_path=")]
            lines.append("resume: python src/train.py " + " ".join([*kept, f"ckpt_path={last}"]))
    log.info("done.\n  " + "\n  ".join(lines))

"""One training run from a composed config: build data, model, callbacks, loggers and Trainer; fit."""

from __future__ import annotations

import logging
import math
import signal
import warnings
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from charrnn.callbacks import HParamsMetric
from charrnn.config import validate_train
from charrnn.data import CharDataModule
from charrnn.errors import CharRNNError
from charrnn.model import CharLM
from charrnn.resume import check_resumable, read_checkpoint
from charrnn.safety import AtomicCheckpointIO, ResumeState, TrainingStopped, numerical_fault

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


def build(
    cfg: DictConfig, overrides: list[str] | None = None
) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The datamodule (set up, so the vocabulary is known), the LightningModule and the Trainer.

    `overrides` (the run's command line) are recorded in every checkpoint, for resume=.
    """
    validate_train(cfg)
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
    callbacks.append(ResumeState(overrides))
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values() if c is not None]
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    return datamodule, module, trainer


def train(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> float:
    """Fits the model and returns the best val/loss (what Hydra sweepers minimise).

    With `ckpt_path` (set by resume= too) the checkpoint is checked first: weights_only, same
    alphabet, same network shape; Lightning then restores weights, optimiser, scheduler, epoch,
    step, position in the epoch, best-so-far and random state from it.
    """
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume") and not ckpt_path:
        raise CharRNNError(
            "resume= is resolved by src/train.py before Hydra starts; from code, pass ckpt_path"
        )
    datamodule, module, trainer = build(cfg, overrides)
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path, mmap=True)
        check_resumable(
            checkpoint, ckpt_path, datamodule.vocab.chars, dict(module.hparams.model),
            datamodule.corpus_path,
        )
        del checkpoint
    params = sum(p.numel() for p in module.parameters())
    log.info(
        "corpus %s: %d train + %d val characters, vocabulary %d; model %s, %s parameters",
        datamodule.corpus_path, len(datamodule.train_ids), len(datamodule.val_ids),
        datamodule.vocab.size, cfg.model.cell, f"{params:,}",
    )
    with warnings.catch_warnings():
        if cfg.get("resume"):  # continuing in the run's own dir: its checkpoints are expected there
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:  # SIGTERM before GracefulStop took over (set-up, sanity check)
            raise TrainingStopped(signal.SIGTERM, trainer.global_step, None) from None
        except RuntimeError as err:
            fault = numerical_fault(err, trainer, module)
            if fault is None:
                raise
            raise fault from err
    best = module.best_val_loss
    if trainer.is_global_zero:
        _report(trainer, best, run_dir, overrides or [])
    return best


def _report(trainer: L.Trainer, best: float, run_dir: Path | None, overrides: list[str]) -> None:
    lines = []
    if math.isfinite(best):
        lines.append(f"best val/loss {best:.4f} nats/char ({best / math.log(2):.4f} bits/char)")
    best_path = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best_path:
        lines.append(f"best checkpoint: {best_path}")
    if run_dir is not None:
        lines.append(f"run dir: {run_dir}")
        lines.append(f"TensorBoard: tensorboard --logdir {run_dir}")
        if (run_dir / "checkpoints" / "last.ckpt").exists():
            lines.append(
                f"resume (e.g. with more trainer.max_epochs): python src/train.py resume={run_dir}"
            )
    log.info("done.\n  " + "\n  ".join(lines))

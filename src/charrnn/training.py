"""One training run from a composed config: build data, model, callbacks, loggers and Trainer; fit."""

from __future__ import annotations

import logging
import logging.config
import math
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from charrnn.callbacks import HParamsMetric, RunResult
from charrnn.config import validate_train
from charrnn.data import CharDataModule
from charrnn.model import CharLM

log = logging.getLogger(__name__)


def _quiet_lightning() -> None:
    """Routes Lightning's messages through Hydra's handlers (console + run-dir log) minus its ads."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    noise = ("💡 Tip", "Trainer already configured with model summary")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith(noise)
    )
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


_quiet_lightning()


class _JobLogging(L.Callback):
    """Gives training processes started fresh (spawn-based DDP) the Hydra job's logging setup.

    Spawned processes receive the Trainer pickled. Unpickling this callback there imports this
    module (which routes Lightning's logs as above) and adds the job's handlers (console + the run
    dir's log file) before the processes connect, so their start-up messages are kept too.
    """

    def __init__(self, config: dict):
        self.config = config

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not logging.getLogger().handlers:  # a fresh interpreter: nothing configured yet
            logging.config.dictConfig(self.config)


def _starts_fresh_processes(trainer: L.Trainer) -> bool:
    """True for spawn-based DDP: Lightning starts new interpreters that run the fit."""
    return getattr(trainer.strategy, "_start_method", None) in ("spawn", "forkserver")


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


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The datamodule (set up, so the vocabulary is known), the LightningModule and the Trainer."""
    validate_train(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
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


def train(
    cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None
) -> float:
    """Fits the model and returns the best val/loss (what Hydra sweepers minimise)."""
    datamodule, module, trainer = build(cfg)
    params = sum(p.numel() for p in module.parameters())
    log.info(
        "corpus %s: %d train + %d val characters, vocabulary %d; model %s, %s parameters",
        datamodule.corpus_path,
        len(datamodule.train_ids),
        len(datamodule.val_ids),
        datamodule.vocab.size,
        cfg.model.cell,
        f"{params:,}",
    )
    if run_dir is not None:
        trainer.callbacks.append(RunResult(run_dir))
    if _starts_fresh_processes(trainer) and HydraConfig.initialized():
        trainer.callbacks.append(_JobLogging(_plain(HydraConfig.get().job_logging)))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    best = module.best_val_loss
    if not math.isfinite(best) and "val/loss_best" in trainer.callback_metrics:
        best = float(trainer.callback_metrics["val/loss_best"])  # fitted in spawned processes (DDP)
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

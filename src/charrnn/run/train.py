"""One training run from a composed config: build data, model, callbacks, loggers and Trainer; fit."""

import ctypes
import logging
import logging.config
import math
import signal
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from charrnn.callbacks import HParamsMetric
from charrnn.data import CharDataModule
from charrnn.errors import CharRNNError
from charrnn.fused_gru import bf16_matmul_supported
from charrnn.model import CharLM
from charrnn.run.checkpoints import LAST
from charrnn.run.guards import AtomicCheckpointIO, ResumeState, TrainingStopped
from charrnn.run.sweep import update_result

log = logging.getLogger(__name__)

# Lightning's messages go through Hydra's handlers (console + run-dir log), minus its ads
for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(name).handlers.clear()
    logging.getLogger(name).propagate = True
_ADS = ("💡 Tip", "Trainer already configured with model summary")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith(_ADS)
)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message="Precision .* is not supported by the model summary")


class _JobLogging(L.Callback):
    """The Hydra job's logging in processes started fresh (spawn-based DDP): unpickling it there
    imports this module and adds the job's handlers, so their messages reach the run's log too."""

    def __init__(self, config: dict):
        self.config = config

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not logging.getLogger().handlers:  # a fresh interpreter: nothing configured yet
            logging.config.dictConfig(self.config)


def choose_precision(precision, accelerator: str) -> tuple[str, str]:
    """trainer.precision as Lightning takes it, and why: `auto` is bf16-mixed on a CPU that
    multiplies bf16 matrices natively (AVX-512-BF16, AMX), 32-true anywhere else."""
    if str(precision) != "auto":
        return precision, "trainer.precision"
    if accelerator != "cpu":
        return "32-true", f"trainer.precision=auto on accelerator={accelerator}: set it to choose"
    if bf16_matmul_supported():
        return "bf16-mixed", "trainer.precision=auto: this CPU multiplies bf16 natively"
    return "32-true", "trainer.precision=auto: this CPU has no native bf16 matrix products"


def cpu_steal() -> tuple[int, int]:
    """(steal, all) CPU time so far from /proc/stat: the hypervisor's share, which slows a run."""
    try:
        times = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (times[7] if len(times) > 7 else 0), sum(times)


class RunResult(L.Callback):
    """The run's outcome in the log and run_dir/result.json (with the precision, why, and the CPU
    steal): from the training process itself (under spawn-based DDP not the Hydra job's)."""

    def __init__(self, run_dir: Path | None, precision_reason: str = ""):
        self.run_dir, self.precision_reason = run_dir, precision_reason
        self.steal_start = (0, 0)  # taken when fitting starts

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self.steal_start = cpu_steal()

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        (steal0, all0), (steal1, all1) = self.steal_start, cpu_steal()
        steal = (steal1 - steal0) / (all1 - all0) if all1 > all0 else 0.0
        if steal > 0.05:
            log.warning("the hypervisor took %.0f%% of the CPU during this run", 100 * steal)
        best = pl_module.best_val_loss if math.isfinite(pl_module.best_val_loss) else None
        bpc = best / math.log(2) if best is not None else None
        best_path = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
        run, lines = self.run_dir, []
        if best is not None:
            lines.append(f"best val/loss {best:.4f} nats/char ({bpc:.4f} bits/char)")
        if best_path:
            lines.append(f"best checkpoint: {best_path}")
        if run is not None:
            lines += [f"run dir: {run}", f"TensorBoard: tensorboard --logdir {run}"]
            if (run / "checkpoints" / LAST).exists():
                how = "resume (e.g. with more trainer.max_epochs)"
                lines.append(f"{how}: python src/train.py resume={run}")
            params = sum(p.numel() for p in pl_module.parameters())
            fields = dict(status="ok", val_loss_best=best, val_bpc=bpc, params=params)
            fields |= dict(epochs=trainer.current_epoch, best_checkpoint=best_path)
            fields |= dict(world_size=trainer.world_size, threads=torch.get_num_threads())
            fields |= dict(precision=trainer.precision, precision_reason=self.precision_reason)
            update_result(run, **fields, cpu_steal=round(steal, 4))
        log.info("done.\n  " + "\n  ".join(lines))


def _plain(node) -> dict | None:
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def _flat_params(cfg: DictConfig) -> dict:
    """The run's hyperparameters as flat scalar key/values, for TensorBoard's HPARAMS view."""

    def walk(prefix, node):
        for key, value in node.items():
            if key.startswith("_"):
                continue
            if isinstance(value, dict):
                yield from walk(f"{prefix}{key}.", value)
            elif value is None or isinstance(value, (int, float, str, bool)):
                yield prefix + key, "null" if value is None else value

    groups = {k: _plain(cfg[k]) for k in ("data", "model", "optimizer", "trainer") if k in cfg}
    groups["scheduler"] = _plain(cfg.get("scheduler")) or {"name": "none"}
    return dict(walk("", {"seed": cfg.seed, **groups}))


def keep_freed_memory() -> None:
    """Has glibc keep freed memory: else blocks over 32 MB are unmapped when freed and every step
    faults its activations in again (~80,000 faults: 1/4 of a GRU-1024 step). Cost: peak RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (nor Linux)
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GB from the reusable heap
    libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD (a C int): do not shrink the heap back


def build(
    cfg: DictConfig, overrides: list[str] | None = None, run_dir: Path | None = None
) -> tuple[CharDataModule, CharLM, L.Trainer]:
    """The datamodule (set up: the vocabulary is known), module and Trainer from a checked config;
    `overrides` go into every checkpoint for resume=, the outcome into run_dir/result.json."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: CharDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")  # (it locates the corpus first)
    parts = {key: _plain(cfg.get(key)) for key in ("model", "optimizer", "scheduler")}
    module = CharLM(vocab=datamodule.vocab.chars, stateful=cfg.data.stateful, **parts)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values() if c is not None]
    precision, why = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    log.info("precision %s (%s)", precision, why)
    callbacks += [HParamsMetric(_flat_params(cfg)), ResumeState(overrides), RunResult(run_dir, why)]
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        precision=precision,
    )
    return datamodule, module, trainer


def train(
    cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None
) -> float:
    """Fits the model; the best val/loss (what Hydra sweepers minimise). With `ckpt_path` (set by
    resume= too) Lightning restores the whole training state from it, read weights_only."""
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume") and not ckpt_path:
        raise CharRNNError(
            "resume= is resolved by src/train.py before Hydra starts; from code, pass ckpt_path"
        )
    datamodule, module, trainer = build(cfg, overrides, run_dir)
    data, params = datamodule, sum(p.numel() for p in module.parameters())
    log.info(
        f"corpus {data.corpus_path}: {len(data.files)} file(s), {len(data.train_ids)} train + "
        f"{len(data.val_ids)} val characters, vocabulary {data.vocab.size}; model "
        f"{cfg.model.cell}, {params:,} parameters"
    )
    launcher = trainer.strategy.launcher  # spawn-based DDP: new interpreters run the fit
    if not getattr(launcher, "is_interactive_compatible", True) and HydraConfig.initialized():
        trainer.callbacks.append(_JobLogging(_plain(HydraConfig.get().job_logging)))
    with warnings.catch_warnings():
        if cfg.get("resume"):  # continuing in the run's own dir: its checkpoints are expected there
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:  # SIGTERM outside a training batch (set-up, sanity check)
            raise TrainingStopped(signal.SIGTERM, trainer.global_step, None) from None
    best = module.best_val_loss
    if not math.isfinite(best) and "val/loss_best" in trainer.callback_metrics:
        best = float(trainer.callback_metrics["val/loss_best"])  # fitted in spawned processes (DDP)
    return best

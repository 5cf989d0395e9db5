"""What keeps a run from being lost: atomic checkpoint writes, last.ckpt kept current, what a
checkpoint must record for an exact resume, a clean stop on Ctrl-C or SIGTERM, and a stop before a
non-finite loss or gradient reaches the weights."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import tempfile
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from charrnn.errors import CharRNNError
from charrnn.resume import LAST, NOT_REPLAYED, RECORD, override_key, read_checkpoint

log = logging.getLogger(__name__)

METRICS = "logged_metrics"  # ResumeState's copy of trainer.callback_metrics in a checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO that never leaves a half-written file and never unpickles objects.

    Saves go to a temp file in the checkpoint's own directory, are fsynced, then os.replace'd over
    the old file, so a run killed at any moment leaves the previous checkpoint intact. (Lightning
    2.6's own save moves a temp file from the system temp dir: a copy, not an atomic rename, when
    that is another filesystem, and the temp file is left behind on a kill.) Loads go through
    read_checkpoint: weights_only=True always.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return read_checkpoint(path, ours=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temp_files(directory: Path) -> None:
    """Deletes the temp files (`.<name>.*.tmp`) a killed AtomicCheckpointIO save left behind."""
    for stale in Path(directory).glob(".*.ckpt.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


class ResumeState(L.Callback):
    """Stores in every checkpoint what Lightning does not: the run's command-line overrides (so
    resume=... replays them), the global torch random state (which dropout draws from) and the
    logged metrics.

    On resume it redoes what Lightning leaves out: a ReduceLROnPlateau step, when the checkpoint
    was taken at an epoch's end before that step (Lightning skips it on such a restart, having no
    metric to give it), and a changed `optimizer.lr` (Lightning restores the optimiser state,
    learning rate included, so a lower lr given on resume would otherwise be ignored).
    """

    state_key = RECORD  # where charrnn.resume.recorded_overrides finds it

    def __init__(self, overrides: list[str] | None = None):
        self.overrides = [o for o in overrides or [] if override_key(o) not in NOT_REPLAYED]
        self._saved_lr = None
        self._saved_metrics: dict = {}

    def state_dict(self) -> dict:
        state = {"overrides": list(self.overrides), "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[METRICS] = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._saved_lr = (checkpoint.get("hyper_parameters", {}).get("optimizer") or {}).get("lr")
        self._saved_metrics = checkpoint.get(METRICS, {})

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_skipped_schedulers(trainer)
        self._apply_new_lr(trainer, pl_module)

    def _step_skipped_schedulers(self, trainer) -> None:
        """The epoch-end scheduler steps Lightning leaves out when it resumes from a checkpoint
        written at an epoch's end, before those steps: every epoch scheduler when the epoch counts
        as finished ("resumed on epoch end"), ReduceLROnPlateau alone when Lightning replays the
        epoch's end ("restarted on epoch end"), with the val/loss the checkpoint recorded."""
        loop = trainer.fit_loop
        if not (loop.resumed_on_epoch_end or loop.restarted_on_epoch_end):
            return
        ended = trainer.current_epoch - (1 if loop.resumed_on_epoch_end else 0)
        for config in trainer.lr_scheduler_configs:
            if config.interval != "epoch" or (ended + 1) % config.frequency:
                continue
            if config.reduce_on_plateau:
                metric = self._saved_metrics.get(config.monitor)
                if metric is not None:
                    config.scheduler.step(metric)
            elif loop.resumed_on_epoch_end:
                config.scheduler.step()

    def _apply_new_lr(self, trainer, pl_module) -> None:
        lr = (pl_module.hparams.get("optimizer") or {}).get("lr")
        if self._saved_lr is None or lr is None or lr == self._saved_lr:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
                if "initial_lr" in group:
                    group["initial_lr"] = lr
        log.info("optimizer.lr %g replaces the checkpoint's %g", lr, self._saved_lr)


class TrainingStopped(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM): not an error; exit code 128 + signal."""

    def __init__(self, signum: int, step: int, saved: Path | None):
        self.signum, self.step, self.saved = signum, step, saved
        name = signal.Signals(signum).name
        where = f"wrote {saved}" if saved else "no checkpoint is configured, nothing was saved"
        super().__init__(f"stopped by {name} after step {step}; {where}")


def _all_finite(tensors) -> bool:
    tensors = [t for t in tensors if t is not None]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class LastCheckpoint(Checkpoint):
    """Keeps `<dirpath>/last.ckpt` current: after every training epoch, every
    `every_n_train_steps` optimiser steps, and when GracefulStop asks. It is what resume= reads.

    Lightning 2.6's ModelCheckpoint(save_last=True) rewrites last.ckpt only when it also saves a
    top-k checkpoint, so with a monitored metric that stops improving last.ckpt goes stale; this
    callback owns last.ckpt instead. As a Checkpoint subclass Lightning runs it after the best-model
    ModelCheckpoint, so the file holds that callback's updated state. It refuses to write
    non-finite weights, so a good last.ckpt is never replaced by a broken one.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.saved_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.dirpath.is_dir():
            remove_stale_temp_files(self.dirpath)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_n_train_steps
        if every and trainer.global_step % every == 0:
            self.save(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> Path | None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return None
        if not _all_finite(p.detach() for p in pl_module.parameters()):
            raise CharRNNError(
                f"the weights are not finite at step {trainer.global_step}; {self.path} was left "
                "as it was; lower optimizer.lr or set trainer.gradient_clip_val and train again"
            )
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self.saved_step = trainer.global_step
        return self.path


def _last_checkpoint(trainer) -> LastCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)


class GracefulStop(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM: finish the current batch, write last.ckpt, stop.

    The handlers are installed when training starts and replace Lightning's SIGTERM notifier, which
    would stop in the middle of a validation run without saving. A second Ctrl-C aborts at once,
    without saving (last.ckpt keeps its previous, complete content).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._request)

    def _request(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: abort now
            return
        self.signum = signum
        log.warning(
            "%s received: finishing this batch, writing last.ckpt and stopping "
            "(press Ctrl-C again to abort without saving)",
            signal.Signals(signum).name,
        )

    def _stop_if_asked(self, trainer, pl_module) -> None:
        if self.signum is None:
            return
        last = _last_checkpoint(trainer)
        saved = last.save(trainer, pl_module) if last is not None else None
        raise TrainingStopped(self.signum, trainer.global_step, saved)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_asked(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_if_asked(trainer, pl_module)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


class StopOnNonFinite(L.Callback):
    """Stops training at the first non-finite loss or gradient, before the optimiser step could
    write it into the weights, with a one-line error naming the step and a remedy.

    Also stops if an optimiser step leaves non-finite weights, or val/loss is not finite; it runs
    before the checkpoint callbacks, so no checkpoint is ever written from such a state.
    """

    def __init__(self):
        self._batch = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._stop(trainer, pl_module, f"train/loss is {loss.detach().float().item()}")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not _all_finite(p.grad for p in pl_module.parameters()):
            self._stop(trainer, pl_module, "the gradient is not finite")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the optimiser itself can make weights non-finite (e.g. Adam with eps=0 divides 0 by 0);
        # this runs before the checkpoint callbacks' hooks, so such weights are never saved
        if not _all_finite(p.detach() for p in pl_module.parameters()):
            self._stop(
                trainer, pl_module, "the optimiser step made the weights non-finite", stepped=True
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        # runs before the checkpoint callbacks' on_validation_end, so nothing is saved after it
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking and not torch.isfinite(loss).all():
            self._stop(trainer, pl_module, f"val/loss is {float(loss)}", after=True)

    def _stop(self, trainer, pl_module, what: str, after=False, stepped=False) -> None:
        if after:  # the weights are finite but the model is diverging
            when = f"after step {trainer.global_step} (validation of epoch {trainer.current_epoch})"
            kept = "nothing is saved from here on"
        elif stepped:
            when = (
                f"at step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                f"{self._batch})"
            )
            kept = "nothing is saved from here on"
        else:
            when = (
                f"at step {trainer.global_step + 1} (epoch {trainer.current_epoch}, batch "
                f"{self._batch})"
            )
            kept = "the weights were not updated"
        last = _last_checkpoint(trainer)
        if last is not None and last.saved_step is not None:
            kept += f", {last.path} (step {last.saved_step}) is kept"
        elif last is not None and last.path.is_file():
            kept += f", {last.path} is kept as it was"
        else:
            kept += " and no checkpoint had been written yet"
        remedy = _remedy(trainer, pl_module)
        raise CharRNNError(f"training stopped: {what} {when}; {kept}; {remedy}")


def _remedy(trainer, pl_module) -> str:
    lr = (pl_module.hparams.get("optimizer") or {}).get("lr")
    numeric = isinstance(lr, (int, float)) and math.isfinite(lr)
    now, lower = (f"{lr:g}", f"{lr / 10:g}") if numeric else (str(lr), "a tenth of it")
    clip = trainer.gradient_clip_val
    clipping = (
        f"a smaller trainer.gradient_clip_val (now {clip})"
        if clip
        else "gradient clipping with trainer.gradient_clip_val=1.0 (now off)"
    )
    return f"try a lower optimizer.lr (now {now}, e.g. {lower}) or {clipping}, then train again"


def numerical_fault(err: RuntimeError, trainer, pl_module) -> CharRNNError | None:
    """The one-line error for a float overflow torch raises inside an optimiser step (an absurd
    optimizer.lr), or None for any other RuntimeError."""
    if "without overflow" not in str(err):
        return None
    return CharRNNError(
        f"training stopped: a value overflowed its float type at step {trainer.global_step + 1} "
        f"(epoch {trainer.current_epoch}); {_remedy(trainer, pl_module)}"
    )

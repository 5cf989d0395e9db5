"""What keeps a run from being lost: atomic checkpoints, what an exact resume needs, a clean stop
on Ctrl-C or SIGTERM, and a stop before non-finite values are saved."""

import logging
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from charrnn.errors import CharRNNError
from charrnn.files import remove_stale_parts, write_atomically
from charrnn.run.checkpoints import LAST, read_checkpoint
from charrnn.run.resume import NOT_REPLAYED, RECORD, override_key

log = logging.getLogger(__name__)

METRICS = "logged_metrics"  # ResumeState's copy of trainer.callback_metrics in a checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints through write_atomically and read_checkpoint (weights_only=True). Lightning 2.6
    moves a temp file from the system temp dir: a copy across filesystems, left behind on a kill."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        remove_stale_parts(Path(path).parent, "*.ckpt")  # what a killed save left behind

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

        write_atomically(Path(path), save)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return read_checkpoint(path, ours=False)


class ResumeState(L.Callback):
    """Stores what Lightning does not (overrides for resume=, dropout's random state, metrics); on
    resume, redoes what it leaves out: an epoch end's scheduler steps, a changed `optimizer.lr`."""

    state_key = RECORD  # where charrnn.run.resume.recorded_overrides finds it

    def __init__(self, overrides: list[str] | None = None):
        self.overrides = [o for o in overrides or [] if override_key(o) not in NOT_REPLAYED]
        self._saved_lr, self._saved_metrics = None, {}

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
        metrics = trainer.callback_metrics.items()  # name -> tensor
        checkpoint[METRICS] = {key: float(value) for key, value in metrics if value.numel() == 1}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._saved_lr = (checkpoint.get("hyper_parameters", {}).get("optimizer") or {}).get("lr")
        self._saved_metrics = checkpoint.get(METRICS, {})

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_skipped_schedulers(trainer)
        lr = (pl_module.hparams.get("optimizer") or {}).get("lr")
        if self._saved_lr is None or lr is None or lr == self._saved_lr:
            return
        for group in (g for optimizer in trainer.optimizers for g in optimizer.param_groups):
            group.update({key: lr for key in ("lr", "initial_lr") if key in group})
        log.info("optimizer.lr %g replaces the checkpoint's %g", lr, self._saved_lr)

    def _step_skipped_schedulers(self, trainer) -> None:
        """After a checkpoint from an epoch's end, before its scheduler steps: every epoch scheduler
        if the epoch counts as done, else ReduceLROnPlateau alone (with the saved val/loss)."""
        loop = trainer.fit_loop
        if not (loop.resumed_on_epoch_end or loop.restarted_on_epoch_end):
            return
        ended = trainer.current_epoch - (1 if loop.resumed_on_epoch_end else 0)
        for config in trainer.lr_scheduler_configs:
            if config.interval != "epoch" or (ended + 1) % config.frequency:
                continue
            if config.reduce_on_plateau:
                if (metric := self._saved_metrics.get(config.monitor)) is not None:
                    config.scheduler.step(metric)
            elif loop.resumed_on_epoch_end:
                config.scheduler.step()


class LastCheckpoint(Checkpoint):
    """`<dirpath>/last.ckpt` (resume= reads it) at epoch ends, every `every_n_train_steps` and when
    GracefulStop asks. Not save_last=True: Lightning 2.6.6 writes it only with a new top-k one."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        self.path, self.every_n_train_steps = Path(dirpath) / LAST, every_n_train_steps
        self.saved_step: int | None = None  # the step last.ckpt holds, once this run wrote it

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def save(self, trainer) -> Path | None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return None
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self.saved_step = trainer.global_step
        return self.path


def last_keeper(trainer: L.Trainer) -> LastCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)


class TrainingStopped(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM): not an error; exit code 128 + signal."""

    def __init__(self, signum: int, step: int, saved: Path | None):
        self.signum, self.step, self.saved = signum, step, saved
        where = f"wrote {saved}" if saved else "no checkpoint is configured, nothing was saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {where}")


class GracefulStop(L.Callback):
    """Ctrl-C or SIGTERM: finish the batch, write last.ckpt, stop (exit 130 / 143). Lightning's
    SIGTERM stops unsaved, its Ctrl-C mid-batch with exit 1 (OnExceptionCheckpoint would save
    half-stepped states); here both set a flag for the batch's end. A second Ctrl-C aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum = None
        if threading.current_thread() is threading.main_thread():  # where handlers can be set
            self._previous = {s: signal.signal(s, self._request) for s in self.SIGNALS}

    def _request(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abort now
        if self.signum is None:
            self.signum = signum
            log.warning(
                "%s received: finishing this batch, writing last.ckpt and stopping "
                "(press Ctrl-C again to abort without saving)",
                signal.Signals(signum).name,
            )

    def _stop_if_asked(self, trainer, *_) -> None:
        if self.signum is not None:
            keeper = last_keeper(trainer)
            saved = keeper.save(trainer) if keeper is not None else None
            raise TrainingStopped(self.signum, trainer.global_step, saved)

    def _restore_handlers(self, *_) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    on_train_batch_end = on_train_epoch_end = _stop_if_asked  # epoch end: a signal during val
    on_train_end = on_exception = _restore_handlers


class StopOnNonFinite(L.Callback):
    """One line naming the step and a remedy at the first non-finite loss, weight (an optimiser
    step can make them so: Adam with eps=0 divides 0 by 0) or val/loss. Its hooks run before the
    checkpoint callbacks' (Lightning runs those last), so no such state is ever saved."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        values = [loss, *(p.detach() for p in pl_module.parameters())]  # one check: one sync
        if not bool(torch.stack([torch.isfinite(t).all() for t in values]).all()):
            made = "the optimiser step made the weights non-finite"
            what = made if torch.isfinite(loss) else f"train/loss is {float(loss)}"
            self._stop(trainer, what)

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking and not torch.isfinite(loss).all():
            self._stop(trainer, f"val/loss is {float(loss)}")

    @staticmethod
    def _stop(trainer, what: str) -> None:
        last, kept = last_keeper(trainer), "no checkpoint had been written yet"
        if last is not None and last.saved_step is not None:
            kept = f"{last.path} (step {last.saved_step}) is kept"
        elif last is not None and last.path.is_file():
            kept = f"{last.path} is kept as it was"
        lr = (trainer.lightning_module.hparams.get("optimizer") or {}).get("lr")
        raise CharRNNError(
            f"training stopped: {what} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); {kept}; try a lower optimizer.lr (now {lr}) or "
            f"trainer.gradient_clip_val=1.0 or lower (now {trainer.gradient_clip_val}), then train again"
        )

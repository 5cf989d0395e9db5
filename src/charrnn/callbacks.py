"""Callbacks: text samples after each validation, the TensorBoard HPARAMS entry, result.json."""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from charrnn.results import update_result
from charrnn.sampling import Sampler

log = logging.getLogger(__name__)


def as_markdown_verbatim(text: str) -> str:
    """TensorBoard renders text as Markdown; a 4-space-indented block shows every character as is."""
    return "\n".join("    " + line for line in text.split("\n"))


class SampleText(L.Callback):
    """After each validation run, samples text from a fixed prompt with its own seeded generator.

    Using a private torch.Generator leaves the training random stream untouched.
    """

    def __init__(
        self,
        prompt: str = "ROMEO:",
        length: int = 300,
        temperature: float = 0.8,
        top_k: int = 0,
        seed: int = 0,
    ):
        self.prompt, self.length, self.temperature = prompt, length, temperature
        self.top_k, self.seed = top_k, seed

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        vocab = pl_module.vocab
        unknown = vocab.unknown(self.prompt)
        if unknown:  # a corpus without these characters must not stop training; sample anyway
            kept = "".join(c for c in self.prompt if c not in unknown)
            kept = kept or ("\n" if "\n" in vocab.chars else vocab.chars[0])
            log.warning(
                "callbacks.sample_text.prompt %r has characters not in this corpus (%s); sampling from %r",
                self.prompt,
                ", ".join(map(repr, unknown)),
                kept,
            )
            self.prompt = kept

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        generator = torch.Generator().manual_seed(self.seed)
        sampler = Sampler(pl_module.net, pl_module.vocab)
        try:
            (text,) = sampler.generate(
                self.prompt, self.length, self.temperature, self.top_k, generator=generator
            )
        except RuntimeError as err:  # a diverged model: StopOnNonFinite reports it, not a traceback
            if "probability tensor" not in str(err):
                raise
            log.warning(
                "no sample after epoch %d: the model's probabilities are not finite",
                trainer.current_epoch,
            )
            return
        sample = self.prompt + text
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(
                    "sample", as_markdown_verbatim(sample), trainer.global_step
                )
        log.info("sample after epoch %d:\n%s", trainer.current_epoch, sample)


class HParamsMetric(L.Callback):
    """Declares `val/loss_best` as the metric of this run's hyperparameters in TensorBoard's HPARAMS.

    The metric's values are the `val/loss_best` scalars the module logs; this writes only the
    session header, so no fake value is ever plotted.
    """

    def __init__(self, params: dict, metric: str = "val/loss_best"):
        self.params, self.metric = params, metric

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                experiment, start, _ = hparams(self.params, {self.metric: 0.0})
                writer = logger.experiment._get_file_writer()
                writer.add_summary(experiment)
                writer.add_summary(start)


class RunResult(L.Callback):
    """Records the run's outcome in run_dir/result.json when fitting ends (rank 0 only).

    Runs in the training process itself, which under spawn-based DDP is not the Hydra job's process:
    the numbers come from where they were measured.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        best = pl_module.best_val_loss
        checkpoint = trainer.checkpoint_callback
        update_result(
            self.run_dir,
            status="ok",
            val_loss_best=best if math.isfinite(best) else None,
            val_bpc=best / math.log(2) if math.isfinite(best) else None,
            params=sum(p.numel() for p in pl_module.parameters()),
            epochs=trainer.current_epoch,
            best_checkpoint=(checkpoint.best_model_path or None) if checkpoint else None,
            world_size=trainer.world_size,
            threads=torch.get_num_threads(),
        )

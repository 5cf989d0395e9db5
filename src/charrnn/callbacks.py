"""Callbacks: text samples after each validation and the TensorBoard HPARAMS entry."""

import logging

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from charrnn.sampling import Sampler, check_options, seed_generator

log = logging.getLogger(__name__)


class SampleText(L.Callback):
    """Text sampled after each validation from a fixed prompt, with its own seeded generator."""

    def __init__(self, prompt="ROMEO:", length=300, temperature=0.8, top_k=0, seed=0):
        self.prompt, self.length, self.temperature = prompt, length, temperature
        self.top_k, self.seed = top_k, seed

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        vocab, key = pl_module.vocab, "callbacks.sample_text."
        check_options(vocab, self.length, self.temperature, self.top_k, 1, key)  # now, not later
        if unknown := vocab.unknown(self.prompt):  # another corpus's characters: sample without
            kept = "".join(c for c in self.prompt if c not in unknown) or vocab.chars[0]
            shown = ", ".join(map(repr, unknown))
            log.warning(
                f"{key}prompt {self.prompt!r}: {shown} not in this corpus; sampling {kept!r}"
            )
            self.prompt = kept

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        sampler, rng = Sampler(pl_module.net, pl_module.vocab), seed_generator(self.seed)
        # its own generator: the training random stream stays as it is
        texts = sampler.generate(self.prompt, self.length, self.temperature, self.top_k, 1, rng)
        sample = self.prompt + texts[0]
        # TensorBoard renders Markdown: a 4-space-indented block shows every character as is
        markdown = "\n".join("    " + line for line in sample.split("\n"))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("sample", markdown, trainer.global_step)
        log.info("sample after epoch %d:\n%s", trainer.current_epoch, sample)


class HParamsMetric(L.Callback):
    """Declares `val/loss_best` the metric of the run's hyperparameters in TensorBoard's HPARAMS:
    only the session header, so no fake value is plotted (Lightning's log_hyperparams logs one)."""

    def __init__(self, params: dict, metric: str = "val/loss_best"):
        self.params, self.metric = params, metric

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for summary in hparams(self.params, {self.metric: 0.0})[:2]:  # not the session end
                    logger.experiment.file_writer.add_summary(summary)

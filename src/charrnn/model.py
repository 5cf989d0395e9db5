"""The LightningModule that trains a CharRNN: loss, state-carried validation, optimiser, schedule."""

import inspect
import logging
import math

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Timer
from lightning_utilities.core.apply_func import apply_to_collection

from charrnn.errors import CharRNNError
from charrnn.net import CharRNN, Hidden
from charrnn.vocab import Vocab

log = logging.getLogger(__name__)

SHAPE = ("cell", "embedding_dim", "rnn_units", "num_layers")  # model keys the weights depend on


class CharLM(L.LightningModule):
    """Trains a CharRNN with cross-entropy; validation carries the state across windows. Every
    argument is a plain type, so checkpoints load weights_only and hold all that rebuilds it."""

    def __init__(
        self,
        vocab: str,
        model: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        stateful: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.vocab = Vocab(vocab)
        self.net = CharRNN(self.vocab.size, **model)
        self.best_val_loss = math.inf
        self._train_hidden = self._val_hidden = None  # the states carried across batches

    def forward(self, ids, hidden=None):
        return self.net(ids, hidden)

    def _loss_sum(self, batch, carried: Hidden | None):
        """Loss sum, target count and state; a short last batch starts from zeros, not `carried`."""
        inputs, targets = batch
        first = carried[0] if isinstance(carried, tuple) else carried  # an LSTM's (h, c): h
        hidden = carried if first is not None and first.shape[1] == len(inputs) else None
        logits, hidden = self.net(inputs, hidden)
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        return loss_sum, (targets >= 0).sum(), hidden

    def on_train_epoch_start(self) -> None:
        self._train_hidden = None

    def training_step(self, batch, batch_idx):
        carried = self._train_hidden if self.hparams.stateful else None
        loss_sum, count, hidden = self._loss_sum(batch, carried)
        if self.hparams.stateful:  # truncated backpropagation through time: cut the graph
            self._train_hidden = apply_to_collection(hidden, torch.Tensor, torch.Tensor.detach)
        loss = loss_sum / count.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_hidden = None
        # per val loader (state carried; zero-state windows): loss sum, target count
        self._val_sums = torch.zeros(2, 2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        """Loader 0 carries the state across its windows; loader 1's windows start at zero."""
        carried = None if dataloader_idx else self._val_hidden
        loss_sum, count, hidden = self._loss_sum(batch, carried)
        if not dataloader_idx:
            self._val_hidden = hidden
        self._val_sums[dataloader_idx] += torch.stack([loss_sum.double(), count.double()])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # a couple of batches is not the validation score
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        (total, count), (w_total, w_count) = sums.tolist()
        loss = total / count
        bpc = loss / math.log(2)
        best = self.best_val_loss = min(self.best_val_loss, loss)
        self.log_dict({"val/loss": loss, "val/bpc": bpc, "val/loss_best": best}, prog_bar=True)
        if w_count > 0:  # nanoGPT's protocol (each window from a zero state): compare with it here
            width = self.trainer.val_dataloaders[1].dataset.seq_length  # WindowBatches'
            self.log(f"val/loss_w{width}", w_total / w_count)
        if self.trainer.is_global_zero:
            at = "epoch %d step %d: val/loss %.4f (%.3f bpc), best %.4f"
            log.info(at, self.current_epoch, self.global_step, loss, bpc, best)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_val_loss"] = self.best_val_loss
        if self._train_hidden is not None:  # stateful: a mid-epoch resume carries the state on
            checkpoint["train_hidden"] = self._train_hidden

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning loads the weights: refuses, in one line, a checkpoint this run cannot
        continue (another alphabet or network shape, no training state)."""
        corpus = getattr(self.trainer.datamodule, "corpus_path", "this corpus")
        model = dict(self.hparams.model)
        _check_continuable(checkpoint, self.trainer.ckpt_path, self.vocab.chars, model, corpus)
        self.best_val_loss = checkpoint.get("best_val_loss", math.inf)
        self._train_hidden = checkpoint.get("train_hidden")

    def on_train_start(self) -> None:
        if self._train_hidden is not None:  # restored on the CPU; the model may be elsewhere
            self._train_hidden = move_data_to_device(self._train_hidden, self.device)

    def configure_optimizers(self):
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        settings = dict(self.hparams.scheduler)
        factory = hydra.utils.instantiate(settings.pop("scheduler"))
        horizon = {  # schedules that ask for the run's horizon get it from the Trainer
            "total_steps": lambda: float(self.trainer.estimated_stepping_batches),
            "time_fraction": lambda: _time_budget_fraction(self.trainer),
        }
        asked = inspect.signature(factory.func).parameters.keys() & horizon.keys()
        scheduler = factory(optimizer=optimizer, **{key: horizon[key]() for key in asked})
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **settings}}


def _time_budget_fraction(trainer: L.Trainer):
    """A clock for `trainer.max_time`: the fraction of the budget used (None without a budget)."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None or timer.time_remaining("train") is None:
        return None
    budget = max(timer.time_elapsed("train") + timer.time_remaining("train"), 1e-9)  # max_time
    return lambda: timer.time_elapsed("train") / budget


def _chars(chars: set[str], limit: int = 12) -> str:
    shown = sorted(chars)
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(map(repr, shown[:limit])) + more


def _check_continuable(checkpoint: dict, path, vocab: str, model: dict, corpus) -> None:
    hparams = checkpoint.get("hyper_parameters") or {}
    saved = hparams.get("vocab", "")
    if saved != vocab:
        sides = {"corpus": set(vocab) - set(saved), "checkpoint": set(saved) - set(vocab)}
        differences = [f"only in the {side}: {_chars(c)}" for side, c in sides.items() if c]
        raise CharRNNError(
            f"{path} was trained on another alphabet than {corpus} "
            f"({'; '.join(differences)}); continuing needs the same characters: train on text "
            "with exactly these characters, or start a new run without ckpt_path/resume"
        )
    saved_model = hparams.get("model") or {}
    for key in SHAPE:  # dropout may change on resume; the shape of the weights may not
        old, new = saved_model.get(key), model.get(key)
        if key in saved_model and new != old:
            raise CharRNNError(
                f"model.{key}: this run asks for {new!r} but {path} was trained with {old!r}; "
                f"drop that override (or pass model.{key}={old}) to continue from this checkpoint"
            )
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CharRNNError(
            f"{path} holds weights only (no optimiser state or progress), so training cannot "
            "resume from it; pass a last.ckpt or epoch checkpoint written by src/train.py"
        )

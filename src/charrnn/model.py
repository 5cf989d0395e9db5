"""The network (Embedding → GRU/LSTM → Linear) and the LightningModule that trains it."""

from __future__ import annotations

import math

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.errors import CharRNNError
from charrnn.gru import FusedGRU
from charrnn.vocab import Vocab

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
# auto: our FusedGRU for GRUs (faster on CPU, same weights), nn.LSTM (oneDNN-fused) for LSTMs
IMPLS = ("auto", "torch", "fused")

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    """Character language model; `forward` takes ids [batch, time] and an optional hidden state."""

    def __init__(
        self,
        vocab_size: int,
        cell: str = "gru",
        embedding_dim: int = 256,
        rnn_units: int = 1024,
        num_layers: int = 1,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        out_dropout: float = 0.0,
        impl: str = "auto",
    ):
        super().__init__()
        if cell not in CELLS:
            raise CharRNNError(f"model.cell: {cell!r} is not a cell type; choose one of {sorted(CELLS)}")
        if impl not in IMPLS or (impl == "fused" and cell != "gru"):
            raise CharRNNError(
                f"model.impl: {impl!r} is not allowed for model.cell={cell}; choose auto or torch"
                + (" or fused" if cell == "gru" else "")
            )
        self.cell, self.num_layers, self.rnn_units = cell, num_layers, rnn_units
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.emb_dropout = nn.Dropout(emb_dropout)
        fused = cell == "gru" and impl != "torch"
        self.rnn = (FusedGRU if fused else CELLS[cell])(
            embedding_dim, rnn_units, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dropout = nn.Dropout(out_dropout)
        self.head = nn.Linear(rnn_units, vocab_size)

    def init_hidden(self, batch: int, device=None) -> Hidden:
        zeros = torch.zeros(self.num_layers, batch, self.rnn_units, device=device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(self, ids: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        if isinstance(self.rnn, FusedGRU) and not (self.training and self.emb_dropout.p):
            out, hidden = self.rnn.forward_ids(ids, self.embedding.weight, hidden)  # same, faster
        else:
            out, hidden = self.rnn(self.emb_dropout(self.embedding(ids)), hidden)
        return self.head(self.out_dropout(out)), hidden


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    """Cuts the graph between batches (truncated backpropagation through time)."""
    if hidden is None:
        return None
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def _matches(hidden: Hidden | None, rows: int) -> bool:
    if hidden is None:
        return False
    return (hidden[0] if isinstance(hidden, tuple) else hidden).shape[1] == rows


class CharLM(L.LightningModule):
    """Trains a CharRNN with cross-entropy; validation carries the hidden state across windows.

    Every constructor argument is a plain type (str, int, float, dict), so checkpoints load with
    `weights_only=True` and hold everything needed to rebuild the model, vocabulary included.
    """

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
        self._train_hidden: Hidden | None = None
        self._val_hidden: Hidden | None = None
        self._val_sum = self._val_count = None

    def forward(self, ids, hidden=None):
        return self.net(ids, hidden)

    def _loss_sum(self, batch, hidden):
        inputs, targets = batch
        logits, hidden = self.net(inputs, hidden)
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
        )
        return loss_sum, (targets >= 0).sum(), hidden

    def on_train_epoch_start(self) -> None:
        self._train_hidden = None

    def training_step(self, batch, batch_idx):
        carried = self._train_hidden if self.hparams.stateful else None
        hidden = carried if _matches(carried, batch[0].shape[0]) else None
        loss_sum, count, hidden = self._loss_sum(batch, hidden)
        if self.hparams.stateful:
            self._train_hidden = detach_hidden(hidden)
        loss = loss_sum / count.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_hidden = None
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.int64, device=self.device)

    def validation_step(self, batch, batch_idx):
        hidden = self._val_hidden if _matches(self._val_hidden, batch[0].shape[0]) else None
        loss_sum, count, self._val_hidden = self._loss_sum(batch, hidden)
        self._val_sum += loss_sum.double()
        self._val_count += count

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # a couple of batches is not the validation score
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        loss = (total / count).item()
        self.best_val_loss = min(self.best_val_loss, loss)
        self.log_dict(
            {"val/loss": loss, "val/bpc": loss / math.log(2), "val/loss_best": self.best_val_loss},
            prog_bar=True,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_val_loss"] = self.best_val_loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_val_loss = checkpoint.get("best_val_loss", math.inf)

    def configure_optimizers(self):
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        settings = dict(self.hparams.scheduler)
        factory = hydra.utils.instantiate(settings.pop("scheduler"))
        scheduler = factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **settings}}

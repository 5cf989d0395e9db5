"""The network (Embedding → GRU/LSTM → Linear) without Lightning: generation and export need only
this; training wraps it in charrnn.model.CharLM."""

import torch
from torch import Tensor, nn
from torch.func import functional_call

from charrnn.fused_gru import FusedGRU
from charrnn.fused_lstm import FusedLSTM

RNN_LAYERS = {"gru": nn.GRU, "lstm": nn.LSTM}  # model.cell -> torch's layer
FUSED_LAYERS = {"gru": FusedGRU, "lstm": FusedLSTM}  # the same weights and keys, faster on CPU
IMPLS = ("auto", "torch", "fused")  # model.impl: auto = fused = FUSED_LAYERS, torch = RNN_LAYERS

Hidden = Tensor | tuple[Tensor, Tensor]


class CharRNN(nn.Module):
    """ids [batch, time] (+ state) -> logits, state; arguments are checked in charrnn.run.config."""

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
        weight_drop: float = 0.0,
        locked_dropout: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        self.cell, self.num_layers, self.rnn_units = cell, num_layers, rnn_units
        self.weight_drop, self.locked = weight_drop, locked_dropout
        self.emb_dropout, self.out_dropout = emb_dropout, out_dropout  # probabilities: see _dropout
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        layer = (RNN_LAYERS if impl == "torch" else FUSED_LAYERS)[cell]
        dropout = dropout if num_layers > 1 else 0.0
        self.rnn = layer(embedding_dim, rnn_units, num_layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(rnn_units, vocab_size)

    def init_hidden(self, batch: int, device=None) -> Hidden:
        zeros = torch.zeros(self.num_layers, batch, self.rnn_units, device=device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(self, ids: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        by_layer = self.training and self.locked and self.rnn.dropout  # locked masks between
        emb_dropout = self.training and self.emb_dropout
        if isinstance(self.rnn, (FusedGRU, FusedLSTM)) and not (emb_dropout or by_layer):
            out, hidden = self._rnn(self.rnn, ids, hidden, embedding=self.embedding.weight)
        else:  # with embedding=, the fused layers do the same as here, faster
            x = self._dropout(self.emb_dropout, self.embedding(ids))
            out, hidden = self._by_layer(x, hidden) if by_layer else self._rnn(self.rnn, x, hidden)
        return self.head(self._dropout(self.out_dropout, out)), hidden

    def _dropout(self, p: float, x: Tensor) -> Tensor:
        """Dropout on [batch, time, features]; `locked`: one mask per sequence, the same at every
        step (variational dropout, Gal & Ghahramani 2016)."""
        if not (self.training and p):
            return x
        if not self.locked:
            return nn.functional.dropout(x, p)
        return x * x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p).div_(1 - p)

    def _rnn(self, rnn: nn.Module, *args, weights: dict | None = None, **kwargs):
        """rnn(*args, **kwargs), with `weights` in place of its own; in training, DropConnect on the
        recurrent weights (AWD-LSTM's weight drop: one mask per batch, the same at every step)."""
        p = self.weight_drop if self.training else 0.0
        if weights is None and not p:
            return rnn(*args, **kwargs)
        weights = {
            name: nn.functional.dropout(w, p) if p and "weight_hh" in name else w
            for name, w in (weights or dict(rnn.named_parameters())).items()
        }
        return functional_call(rnn, weights, args, kwargs)

    def _by_layer(self, x: Tensor, hidden: Hidden | None):
        """The layers one at a time with a locked mask between them (torch's stacked kernels draw
        one per step), each a one-layer copy on the meta device (no storage) given its weights."""
        rnn, lstm = self.rnn, self.cell == "lstm"
        hidden = self.init_hidden(x.shape[0], x.device) if hidden is None else hidden
        finals, names = [], ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for k in range(self.num_layers):
            if k:
                x = self._dropout(rnn.dropout, x)
            one = type(rnn)(x.shape[-1], rnn.hidden_size, batch_first=True, device="meta")
            weights = {f"{n}_l0": getattr(rnn, f"{n}_l{k}") for n in names}
            state = tuple(h[k : k + 1] for h in hidden) if lstm else hidden[k : k + 1]
            x, final = self._rnn(one, x, state, weights=weights)
            finals.append(final)
        if lstm:
            return x, tuple(torch.cat(parts) for parts in zip(*finals, strict=True))
        return x, torch.cat(finals)

"""The network (Embedding → GRU/LSTM → Linear) without Lightning: generation and export need only
this; training wraps it in charrnn.model.CharLM."""

from __future__ import annotations

import torch
from torch import nn

from charrnn.fused_gru import FusedGRU

RNN_LAYERS = {"gru": nn.GRU, "lstm": nn.LSTM}  # model.cell -> torch's layer
IMPLS = ("auto", "torch", "fused")  # model.impl: auto = FusedGRU for GRUs, nn.LSTM for LSTMs

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    """ids [batch, time] (+ hidden state) -> logits, state. Arguments are checked where they
    enter (charrnn.run.config)."""

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
        self.cell, self.num_layers, self.rnn_units = cell, num_layers, rnn_units
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.emb_dropout = nn.Dropout(emb_dropout)
        # auto: FusedGRU for GRUs (faster on CPU, same weights and keys), nn.LSTM (oneDNN-fused)
        layer = FusedGRU if cell == "gru" and impl != "torch" else RNN_LAYERS[cell]
        dropout = dropout if num_layers > 1 else 0.0
        self.rnn = layer(embedding_dim, rnn_units, num_layers, batch_first=True, dropout=dropout)
        self.out_dropout = nn.Dropout(out_dropout)
        self.head = nn.Linear(rnn_units, vocab_size)

    def init_hidden(self, batch: int, device=None) -> Hidden:
        zeros = torch.zeros(self.num_layers, batch, self.rnn_units, device=device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(
        self, ids: torch.Tensor, hidden: Hidden | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        if isinstance(self.rnn, FusedGRU) and not (self.training and self.emb_dropout.p):
            out, hidden = self.rnn.forward_ids(ids, self.embedding.weight, hidden)  # same, faster
        else:
            out, hidden = self.rnn(self.emb_dropout(self.embedding(ids)), hidden)
        return self.head(self.out_dropout(out)), hidden

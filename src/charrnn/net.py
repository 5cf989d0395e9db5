"""The network itself (Embedding → GRU/LSTM → Linear), importable without Lightning.

Generation and export need only this module; training wraps it in charrnn.model.CharLM.
"""

from __future__ import annotations

import torch
from torch import nn

from charrnn.errors import CharRNNError

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}

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
    ):
        super().__init__()
        if cell not in CELLS:
            raise CharRNNError(
                f"model.cell: {cell!r} is not a cell type; choose one of {sorted(CELLS)}"
            )
        self.cell, self.num_layers, self.rnn_units = cell, num_layers, rnn_units
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.rnn = CELLS[cell](
            embedding_dim, rnn_units, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dropout = nn.Dropout(out_dropout)
        self.head = nn.Linear(rnn_units, vocab_size)

    def init_hidden(self, batch: int, device=None) -> Hidden:
        zeros = torch.zeros(self.num_layers, batch, self.rnn_units, device=device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(
        self, ids: torch.Tensor, hidden: Hidden | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        x = self.emb_dropout(self.embedding(ids))
        out, hidden = self.rnn(x, hidden)
        return self.head(self.out_dropout(out)), hidden

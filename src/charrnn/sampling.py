"""The one stateful sampler: shared by the training callback, the generate CLI and the export."""

from __future__ import annotations

from collections.abc import Callable

import torch

from charrnn.errors import CharRNNError
from charrnn.model import CharRNN
from charrnn.vocab import Vocab


def check_options(vocab: Vocab, prompt: str, length: int, temperature: float, top_k: int) -> None:
    """One-line errors for every option a user can get wrong, before any work is done."""
    if not prompt:
        raise CharRNNError("prompt is empty; give at least one character to start from")
    unknown = vocab.unknown(prompt)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown)
        raise CharRNNError(
            f"prompt has characters the model never saw: {shown}; remove or replace them"
        )
    if length <= 0:
        raise CharRNNError(f"length must be a positive number of characters, got {length}")
    if temperature < 0:
        raise CharRNNError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 <= top_k <= vocab.unk_id:
        raise CharRNNError(
            f"top_k must be between 0 (off) and the vocabulary size {vocab.unk_id}, got {top_k}"
        )


def pick(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None):
    """Next ids from logits [batch, vocab] whose unknown column is already -inf."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)


class Sampler:
    """Generates text from a CharRNN: the prompt in one pass, then one character per step."""

    def __init__(self, net: CharRNN, vocab: Vocab):
        self.net, self.vocab = net, vocab

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        length: int,
        temperature: float = 1.0,
        top_k: int = 0,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        on_step: Callable[[list[str]], None] | None = None,
    ) -> list[str]:
        """Returns `num_samples` continuations of `prompt` (the prompt not included)."""
        check_options(self.vocab, prompt, length, temperature, top_k)
        was_training = self.net.training
        self.net.eval()
        device = next(self.net.parameters()).device
        try:
            ids = torch.as_tensor(self.vocab.encode(prompt), dtype=torch.long, device=device)
            logits, hidden = self.net(ids.expand(num_samples, -1))
            logits = logits[:, -1].float()
            out = []
            for _ in range(length):
                logits[:, self.vocab.unk_id] = float("-inf")
                nxt = pick(logits, temperature, top_k, generator)
                out.append(nxt)
                if on_step is not None:
                    on_step([self.vocab.chars[i] for i in nxt.tolist()])
                logits, hidden = self.net(nxt[:, None], hidden)
                logits = logits[:, -1].float()
        finally:
            self.net.train(was_training)
        columns = torch.stack(out, 1).tolist()
        return [self.vocab.decode(row) for row in columns]

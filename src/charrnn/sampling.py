"""The one stateful sampler: shared by the training callback, the generate CLI and the export.

A generation step reads each weight matrix once, with one matrix product per layer: the input
side of layer 0 is a row of a table holding every vocabulary entry's projection
(Embedding @ W_ih^T + b_ih), and each new hidden state is multiplied in one product by everything
that reads it (its own next recurrent step, and the layer above or the output head). Sampling is
a Gumbel-max argmax over noise drawn once per chunk of steps. The step loop is TorchScript
(`StepGenerator`): a step costs a few C++ op calls, no Python, and the very same scripted code
is what `charrnn.export` saves, so generate.py and the exported file agree exactly.
"""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab

CHUNK = 32  # steps per call into the scripted loop: noise is drawn and on_step called per chunk
SPLIT_MIN = 1 << 20  # weights of at least this many elements get the two-halves batched product
SERIAL_LOG = 2048  # ATen's float log wakes the thread pool above this many elements


UNKNOWN_CHARS = ("error", "drop", "replace")  # what clean_prompt does with unseen characters


def clean_prompt(
    prompt: str, vocab: Vocab, unknown_chars: str = "error", replace_with: str = " "
) -> str:
    """The prompt with the characters the model never saw dropped or replaced, or a one-line error."""
    if not isinstance(prompt, str) or not prompt:
        raise CharRNNError("prompt: give at least one character to start from (prompt='ROMEO:')")
    unknown = vocab.unknown(prompt)
    if not unknown:
        return prompt
    shown = ", ".join(repr(c) for c in unknown)
    if unknown_chars == "replace":
        if vocab.unknown(replace_with):
            raise CharRNNError(
                f"replace_with: {replace_with!r} is not in the model's vocabulary either; "
                f"choose one of {vocab.chars!r}"
            )
        return "".join(replace_with if c in unknown else c for c in prompt)
    if unknown_chars != "drop":
        raise CharRNNError(
            f"prompt has characters the model never saw: {shown}; remove them, or pass "
            "unknown_chars=drop, or unknown_chars=replace (with replace_with=' ')"
        )
    kept = "".join(c for c in prompt if c not in unknown)
    if not kept:
        raise CharRNNError(f"prompt: nothing is left after dropping {shown}; give another prompt")
    return kept


def check_options(vocab: Vocab, length, temperature, top_k, num_samples=1, prefix="") -> None:
    """One-line errors, naming the option (`prefix` + its name), for every sampling option a user
    can get wrong."""

    def whole(value, key: str, low: int, high: float = math.inf) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            upto = f" and <= {high} (the vocabulary size)" if high < math.inf else ""
            raise CharRNNError(
                f"{prefix}{key}: {value!r} is not allowed; use a whole number >= {low}{upto}"
            )

    whole(length, "length", 1)
    whole(top_k, "top_k", 0, vocab.unk_id)
    whole(num_samples, "num_samples", 1)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature < math.inf
    ):
        raise CharRNNError(
            f"{prefix}temperature: {temperature!r} is not allowed; use a number >= 0 (0 = greedy)"
        )


class StepGenerator(nn.Module):
    """A CharRNN's weights laid out for generation, and the scripted generation loop.

    Built from a trained CharRNN (eval semantics: no dropout). Every new hidden state is
    multiplied once, by everything that reads it: layer l's h goes through one product with
    [W_hh_l | W_ih_l+1] (the top layer's with [W_hh | head]), giving its own recurrent part for
    the next step and the next layer's input (or the logits) now. Rows of a batch share every
    weight read. It holds the vocabulary too, so a saved TorchScript copy runs with only torch.
    """

    lstm: bool
    split_min: int
    serial_log: int
    num_layers: int
    hidden_size: int
    gates: int
    known: int
    chunk: int
    chars: list[str]
    index: dict[str, int]
    reads: list[Tensor]
    read_bias: list[Tensor]

    def __init__(self, net: nn.Module, chars: str, split_min: int = SPLIT_MIN):
        super().__init__()
        rnn, head = net.rnn, net.head
        self.split_min, self.serial_log = split_min, SERIAL_LOG
        self.lstm = isinstance(rnn, nn.LSTM)
        self.num_layers = rnn.num_layers
        self.hidden_size = rnn.hidden_size
        self.gates = (4 if self.lstm else 3) * self.hidden_size
        self.known = len(chars)  # the unknown id (= known) gets no logit, so it is never drawn
        self.chunk = CHUNK
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(chars)}
        with torch.no_grad():
            weight = lambda name: getattr(rnn, name).detach().float()  # noqa: E731
            emb = net.embedding.weight.detach().float()
            # layer 0's input projection of every vocabulary entry: a step's input is a row lookup
            self.table = torch.addmm(weight("bias_ih_l0"), emb, weight("weight_ih_l0").t())
            self.reads, self.read_bias = [], []
            for layer in range(self.num_layers):
                if layer + 1 < self.num_layers:  # what this layer's h feeds besides itself
                    w_out = weight(f"weight_ih_l{layer + 1}")
                    b_out = weight(f"bias_ih_l{layer + 1}")
                else:
                    w_out = head.weight.detach().float()[: self.known]
                    b_out = head.bias.detach().float()[: self.known]
                w = torch.cat([weight(f"weight_hh_l{layer}"), w_out])  # [G + out, H]
                b = torch.cat([weight(f"bias_hh_l{layer}"), b_out])
                if w.shape[0] % 2:  # an even width lets several rows split it in halves
                    w, b = F.pad(w, (0, 0, 0, 1)), F.pad(b, (0, 1))
                # transposed and contiguous: h [B, H] @ W [H, G + out] streams W once for all rows
                self.reads.append(w.t().contiguous())
                self.read_bias.append(b)

    def _product(self, bias: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """bias + x [B, K] @ w [K, N]. One row: MKL's matrix-vector product. Several rows and a
        big w: the two column halves of w as one batched product, a thread each; MKL's own
        threading of a few-row product costs almost as much per row as a single row does."""
        rows, (k, n) = x.shape[0], w.shape
        if rows == 1 or w.numel() < self.split_min:
            return torch.addmm(bias, x, w)
        halves = w.view(k, 2, n // 2).transpose(0, 1)  # [2, K, N/2]: a view, nothing copied
        out = torch.baddbmm(bias.view(2, 1, n // 2), x.expand(2, rows, k), halves)
        return out.transpose(0, 1).reshape(rows, n)

    def _cell(self, layer: int, x: Tensor, state: list[Tensor]) -> Tensor:
        """One step of one layer from its input projection x [B, G]: updates its h (and c) and
        recurrent part in `state`; returns what its h feeds (next layer's input, or logits)."""
        size, layers = self.hidden_size, self.num_layers
        h = state[layer]
        slot = (2 if self.lstm else 1) * layers + layer  # hh = h @ W_hh + b_hh, from last step
        hh = state[slot]
        if self.lstm:  # (split/chunk/narrow: one op for several views, unlike x[:, a:b])
            gates = hh + x
            i, f, _, o = torch.sigmoid(gates).chunk(4, 1)
            g = torch.tanh(gates.narrow(1, 2 * size, size))
            c = torch.addcmul(f * state[layers + layer], i, g)
            h = o * torch.tanh(c)
            state[layers + layer] = c
        else:
            x_rz, x_n = x.split([2 * size, size], 1)
            hh_rz, hh_n = hh.split([2 * size, size], 1)
            r, z = torch.sigmoid(x_rz + hh_rz).chunk(2, 1)
            n = torch.tanh(torch.addcmul(x_n, r, hh_n))
            h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
        state[layer] = h
        out = self._product(self.read_bias[layer], h, self.reads[layer])
        hh, feeds = out.split([self.gates, out.shape[1] - self.gates], 1)
        state[slot] = hh
        return feeds

    def _logits(self, ids: Tensor, state: list[Tensor]) -> Tensor:
        """Feeds ids [B] through every layer; logits [B, known chars] of the next character."""
        x = self.table.index_select(0, ids)
        for layer in range(self.num_layers):
            x = self._cell(layer, x, state)
        return x.narrow(1, 0, self.known)

    @torch.jit.export
    def start(self, ids: Tensor, num_samples: int) -> tuple[list[Tensor], Tensor]:
        """Feeds the prompt ids [T] but the last through the network once, in order, carrying
        the state; returns that state for `num_samples` rows and the last id, still to be fed."""
        zeros = torch.zeros(1, self.hidden_size, device=self.table.device)
        state: list[Tensor] = [zeros for _ in range(self.num_layers * (2 if self.lstm else 1))]
        for bias in self.read_bias:  # h = 0, so h @ W_hh + b_hh = b_hh
            state.append(bias[None, : self.gates])
        for t in range(ids.numel() - 1):
            self._logits(ids[t : t + 1], state)
        state = [s.expand(num_samples, s.shape[1]).contiguous() for s in state]
        return state, ids[-1:].expand(num_samples).contiguous()

    @torch.jit.export
    def sample(
        self,
        state: list[Tensor],
        pending: Tensor,
        steps: int,
        temperature: float,
        top_k: int,
        generators: list[torch.Generator],
    ) -> tuple[Tensor, list[Tensor]]:
        """`steps` more characters for every row: ids [B, steps] and the state after them.

        `pending` [B] are the ids not yet fed. Sampling is Gumbel-max: argmax(logits + T * g)
        draws from softmax(logits / T); the noise for the chunk comes from one generator, or one
        generator per row (then a row's text does not depend on the other rows).
        """
        rows, known = pending.shape[0], self.known
        noise = torch.zeros(0)
        if temperature > 0:
            if len(generators) == 1:
                u = torch.rand([steps, rows, known], generator=generators[0])
            else:
                u = torch.stack([torch.rand([steps, known], generator=g) for g in generators], 1)
            flat = u.view(-1)  # Gumbel noise -log(-log(u))
            if flat.numel() <= 16 * self.serial_log:  # small: in pieces the log runs serially,
                for at in range(0, flat.numel(), self.serial_log):  # waking threads costs more
                    flat[at : at + self.serial_log].log_().neg_().log_().neg_()
            else:
                flat.log_().neg_().log_().neg_()
            noise = u.mul_(temperature).to(self.table.device)
        ids = pending
        out: list[Tensor] = []
        for t in range(steps):
            logits = self._logits(ids, state)
            if top_k > 0:
                kth = torch.topk(logits, top_k, 1).values[:, top_k - 1 :]
                logits = logits.masked_fill(logits < kth, -math.inf)
            if temperature > 0:
                logits = logits + noise[t]
            ids = torch.argmax(logits, 1)
            out.append(ids)
        return torch.stack(out, 1), state

    @torch.jit.export
    def encode(self, prompt: str) -> Tensor:
        """Prompt text to ids. TorchScript strings are UTF-8 bytes, and UTF-8 is prefix-free, so
        the first 1-4 byte slice found in the vocabulary is the next character."""
        ids: list[int] = []
        at = 0
        while at < len(prompt):
            width = 1
            while width <= 4 and prompt[at : at + width] not in self.index:
                width += 1
            if width > 4:
                raise ValueError(
                    "prompt has a character this model never saw, at byte "
                    + str(at)
                    + "; remove or replace it"
                )
            ids.append(self.index[prompt[at : at + width]])
            at += width
        if len(ids) == 0:
            raise ValueError("prompt is empty; give at least one character to start from")
        return torch.tensor(ids, dtype=torch.long, device=self.table.device)

    @torch.jit.export
    def decode(self, ids: Tensor) -> list[str]:
        rows: list[list[int]] = ids.tolist()
        return ["".join([self.chars[i] for i in row]) for row in rows]

    def forward(
        self,
        prompt: str,
        length: int = 1000,
        temperature: float = 1.0,
        top_k: int = 0,
        num_samples: int = 1,
        seed: int = 0,
    ) -> list[str]:
        """`num_samples` continuations of `prompt` (prompt not included), reproducible by seed."""
        if length <= 0 or temperature < 0 or top_k < 0 or top_k > len(self.chars):
            raise ValueError(
                "need length > 0, temperature >= 0, 0 <= top_k <= " + str(len(self.chars))
            )
        if num_samples <= 0:
            raise ValueError("need num_samples > 0")
        generator = torch.Generator()
        generator.manual_seed(seed)
        state, pending = self.start(self.encode(prompt), num_samples)
        pieces: list[Tensor] = []
        done = 0
        while done < length:
            steps = min(self.chunk, length - done)
            ids, state = self.sample(state, pending, steps, temperature, top_k, [generator])
            pending = ids[:, -1]
            pieces.append(ids)
            done += steps
        return self.decode(torch.cat(pieces, 1))


def script(net: nn.Module, chars: str) -> torch.jit.ScriptModule:
    """The scripted generator of `net`: what the Sampler runs and what export saves."""
    return torch.jit.script(StepGenerator(net, chars).eval())


def seed_generator(seed: int) -> torch.Generator:
    """The generator a seed means everywhere (generate.py, the callback, the exported file)."""
    return torch.Generator().manual_seed(seed)


class Sampler:
    """Generates text from a CharRNN: the prompt in one pass, then one character per step."""

    def __init__(self, net: nn.Module, vocab: Vocab):
        self.vocab = vocab
        self.core = script(net, vocab.chars)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        length: int,
        temperature: float = 1.0,
        top_k: int = 0,
        num_samples: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        on_step: Callable[[list[str]], None] | None = None,
    ) -> list[str]:
        """Returns `num_samples` continuations of `prompt` (the prompt not included).

        `generator` is one torch.Generator for the whole batch, or one per row (a row then gets
        exactly the text it would get alone with that generator); None draws a seed from torch's
        global generator. `on_step` gets each step's characters (one per row), chunk by chunk.
        """
        clean_prompt(prompt, self.vocab)
        check_options(self.vocab, length, temperature, top_k, num_samples)
        if generator is None:
            generator = seed_generator(int(torch.randint(2**62, ())))
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        if len(generators) not in (1, num_samples):
            raise CharRNNError(
                f"give one generator, or one per sample ({num_samples}), not {len(generators)}"
            )
        device = self.core.table.device
        ids = torch.as_tensor(self.vocab.encode(prompt), dtype=torch.long, device=device)
        state, pending = self.core.start(ids, num_samples)
        pieces = []
        for done in range(0, length, CHUNK):
            steps = min(CHUNK, length - done)
            chunk, state = self.core.sample(
                state, pending, steps, float(temperature), top_k, generators
            )
            pending = chunk[:, -1]
            pieces.append(chunk)
            if on_step is not None:
                for column in chunk.t().tolist():
                    on_step([self.vocab.chars[i] for i in column])
        return [self.vocab.decode(row) for row in torch.cat(pieces, 1).cpu()]

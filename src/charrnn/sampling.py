"""The one stateful sampler, shared by the training callback, generate.py and the export: a step
reads each weight matrix once (StepNet: one product per layer) and draws by Gumbel-max over noise
drawn per chunk of steps. charrnn.run.export saves this StepNet, so the exported files agree."""

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from charrnn import int8_kernel
from charrnn.errors import CharRNNError, check, number, whole
from charrnn.fused_gru import bf16_matmul_supported
from charrnn.vocab import Vocab

CHUNK = 8  # steps per call of an exported file; noise is drawn, on_step called per chunk
SERIAL_LOG = 2048  # ATen's float log wakes the thread pool above this many elements
UNKNOWN_CHARS = ("error", "drop", "replace")  # what clean_prompt does with unseen characters
PRECISIONS = ("auto", "fp32", "bf16", "int8")  # of the step's weights (see resolve_precision)
PLAIN_FP32_OUT = (None, 1.0, 0, torch.float32, "none", [], "")  # qlinear: no bias/post-op, fp32
INT8_DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")  # CPU flags of exact int8 sums


def resolve_precision(value, target: str = "cpu") -> str:
    """`precision` as a step on `target` (a device type, or "onnx") runs it. auto: int8 where the
    CPU has native bf16 (such CPUs multiply int8 natively too: VNNI, AMX), fp32 elsewhere."""
    allowed = PRECISIONS if target == "cpu" else PRECISIONS[:2]  # low precision: torch on CPU
    if value not in allowed:
        raise CharRNNError(
            f"precision: {value!r} is not allowed for {target}; choose one of {', '.join(allowed)}"
        )
    if value == "auto":
        return "int8" if target == "cpu" and bf16_matmul_supported() else "fp32"
    return value


def onednn_int8_weight(w: Tensor) -> tuple[Tensor, Tensor] | None:
    """int8 weights [N, K] packed for oneDNN's int8 linear (with zero points), None where it is not
    exact (without VNNI/AMX it adds u8 x s8 pairs in saturating int16). At 2-5 rows it beats
    torch._int_mm (~50 us for 1024 -> 3138 here against 80-130); at one row _int_mm's gemv: 25."""
    capabilities = torch.cpu.get_capabilities()
    if w.device.type != "cpu" or not any(capabilities.get(k) for k in INT8_DOT_PRODUCTS):
        return None
    try:
        packed = torch.ops.onednn.qlinear_prepack(w, [1, w.shape[1]])
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return None
    return packed, torch.zeros(w.shape[0], dtype=torch.long)


def int8_rows_weights(w: Tensor) -> tuple[Tensor, Tensor] | None:
    """int8 weights [N, K] packed [N/16, K/4, 16, 4] for int8_rows.cpp, with 128 * their row sums
    (it takes q + 128 as uint8); None where the kernel is not built or this CPU cannot run it."""
    if w.device.type != "cpu" or not int8_kernel.load():
        return None
    (n, k), (n16, k4) = w.shape, (-(-w.shape[0] // 16), -(-w.shape[1] // 4))
    padded = torch.zeros(n16 * 16, k4 * 4, dtype=torch.int8)
    padded[:n, :k] = w
    packed = padded.view(n16, 16, k4, 4).transpose(1, 2).contiguous()
    return packed, w.sum(1, dtype=torch.int32).mul_(128)


def clean_prompt(
    prompt: str, vocab: Vocab, unknown_chars: str = "error", replace_with: str = " "
) -> str:
    """The prompt with the characters the model never saw dropped or replaced, or a one-line error."""
    if not isinstance(prompt, str) or not prompt:
        raise CharRNNError("prompt: give at least one character to start from (prompt='ROMEO:')")
    if not (unknown := vocab.unknown(prompt)):
        return prompt
    shown, replace = ", ".join(map(repr, unknown)), unknown_chars == "replace"
    if replace and vocab.unknown(replace_with):
        raise CharRNNError(
            f"replace_with: {replace_with!r} is not in the model's vocabulary either; "
            f"choose one of {vocab.chars!r}"
        )
    if unknown_chars not in ("drop", "replace"):
        raise CharRNNError(
            f"prompt has characters the model never saw: {shown}; remove them, or pass "
            "unknown_chars=drop, or unknown_chars=replace (with replace_with=' ')"
        )
    substitute = replace_with if replace else ""
    if not (kept := "".join(substitute if c in unknown else c for c in prompt)):
        raise CharRNNError(f"prompt: nothing is left after dropping {shown}; give another prompt")
    return kept


def check_options(vocab: Vocab, length, temperature, top_k, num_samples=1, prefix="") -> None:
    """A one-line error naming the option (`prefix` + its name) for any bad sampling option."""
    count, top = ((lambda v: whole(v) and v >= 1), "use a whole number >= 1"), vocab.unk_id
    top_k_rule = f"use a whole number >= 0 and <= {top} (the vocabulary size)"
    temperature_rule = (lambda v: number(v) and 0 <= v < math.inf), "use a number >= 0 (0 = greedy)"
    rules = {
        "length": count,
        "top_k": ((lambda v: whole(v) and 0 <= v <= top), top_k_rule),
        "num_samples": count,
        "temperature": temperature_rule,
    }
    values = dict(length=length, top_k=top_k, num_samples=num_samples, temperature=temperature)
    check(values.get, rules, prefix)


class StepNet(nn.Module):
    """A CharRNN's weights laid out for generation (no dropout); `forward` runs steps for all rows.
    Layer 0's input is a row of a per-character table; layer l's new h goes through one product
    with [W_hh_l | W_ih_l+1] (the top layer's with [W_hh | head]): its next recurrent part and the
    next layer's input (or the logits). b_hh is folded into the input side (a GRU keeps b_hn, which
    r gates), so the state starts at zeros. `precision` is the read weights'; table and state: fp32."""

    def __init__(self, net: nn.Module, known: int, precision: str = "fp32"):
        super().__init__()
        rnn, head = net.rnn, net.head
        self.lstm, self.precision = isinstance(rnn, nn.LSTM), precision
        self.layers, size = rnn.num_layers, rnn.hidden_size
        self.size, self.vnni, self.onednn = size, [], []  # int8: packed for int8_rows.cpp, oneDNN
        self.gates = (4 if self.lstm else 3) * size
        weight = lambda name: getattr(rnn, name).detach().float()  # noqa: E731
        hh_bias = []  # what of b_hh is added to the input side (all but a GRU's b_hn)
        for layer in range(self.layers):
            b = weight(f"bias_hh_l{layer}").clone()
            if not self.lstm:
                self.register_buffer(f"b_hn{layer}", b[2 * size :] * 2)
                b[2 * size :] = 0
            hh_bias.append(b)
        # an LSTM's g rows and a GRU's n rows doubled: tanh(a) = 2 sigmoid(2a) - 1, and ATen's tanh
        # takes 3-4x its sigmoid (an LSTM's g comes out of the one sigmoid of all its gates; x2 is
        # exact at every precision: int8 just doubles that row's scale)
        g = slice(2 * size, 3 * size)
        emb = net.embedding.weight.detach().float()
        table = emb @ weight("weight_ih_l0").t() + weight("bias_ih_l0") + hh_bias[0]
        table[:, g] *= 2
        self.register_buffer("table", table)
        for layer in range(self.layers):
            if layer + 1 < self.layers:  # what this layer's h feeds besides itself
                w_out = weight(f"weight_ih_l{layer + 1}")
                b_out = weight(f"bias_ih_l{layer + 1}") + hh_bias[layer + 1]
            else:  # the unknown id (= known) gets no logit, so it is never drawn
                w_out, b_out = (p.detach().float()[:known] for p in (head.weight, head.bias))
            w = torch.cat([weight(f"weight_hh_l{layer}"), w_out])  # [G + out, H]
            w[g] *= 2
            if layer + 1 < self.layers:  # and the next layer's
                w[self.gates :][g] *= 2
                b_out[g] *= 2
            if precision == "int8":  # symmetric per output row: w ~ q * scale, q in [-127, 127]
                scale = (w.abs().amax(1) / 127).clamp_min(1e-30)
                self.register_buffer(f"scale{layer}", scale)
                w = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
                self.vnni.append(int8_rows_weights(w))
                self.onednn.append(onednn_int8_weight(w))
            else:  # fp32 transposed (h @ W [H, G + out] streams W once for all rows); bf16 as is
                w = w.t().contiguous() if precision == "fp32" else w.bfloat16()
            self.register_buffer(f"read{layer}", w)
            self.register_buffer(f"read_bias{layer}", torch.cat([torch.zeros(self.gates), b_out]))

    def state_sizes(self) -> list[int]:
        """Widths of the state: h per layer, (c per layer,) recurrent part per layer."""
        return [self.size] * self.layers * (2 if self.lstm else 1) + [self.gates] * self.layers

    def product(self, layer: int, h: Tensor) -> Tensor:
        """h [B, H] times layer's read weights plus bias, in fp32. bf16: h in bf16. int8 (W8A8): h
        quantised per row (scale max|h| / 127), an exact int32 product, dequantised in fp32; all
        per row, so a row's values never depend on the rest of its batch."""
        w, bias = getattr(self, f"read{layer}"), getattr(self, f"read_bias{layer}")
        if self.precision == "fp32":
            return torch.addmm(bias, h, w)
        if self.precision == "bf16":
            return nn.functional.linear(h.bfloat16(), w).float().add_(bias)
        s = h.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
        q, scale, rows = (h / s).round_(), getattr(self, f"scale{layer}"), h.shape[0]
        vnni, onednn = self.vnni[layer], self.onednn[layer]
        if torch.compiler.is_exporting():  # (_to_copy: q.to would add a 3 us metadata assert)
            acc = torch._int_mm(torch.ops.aten._to_copy(q, dtype=torch.int8), w.t()).mul(scale)
        elif rows == 1 or (vnni is None and onednn is None):
            acc = torch._int_mm(q.to(torch.int8), w.t()).mul(scale)  # fp32; one row: a gemv
        elif vnni is not None and rows <= 8:  # the same values, the weights read once for all rows
            return torch.ops.charrnn.int8_rows(q.add_(128).to(torch.uint8), *vnni, scale, s, bias)
        else:  # the same values (exact int32 sums times scale), q shifted to uint8 as it takes
            q, (w, zeros) = q.add_(128).to(torch.uint8), onednn
            acc = torch.ops.onednn.qlinear_pointwise(q, 1.0, 128, w, scale, zeros, *PLAIN_FP32_OUT)
        return torch.addcmul(bias, acc, s)

    def logits(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Feeds ids [B]; returns the logits [B, known] of the next character and the new state."""
        layers, size = self.layers, self.size
        x, new = self.table.index_select(0, ids), list(state)
        for layer in range(layers):
            h, hh = state[layer], state[-layers + layer]
            if self.lstm:  # (split/chunk/narrow: one op for several views, unlike x[:, a:b])
                i, f, g, o = torch.sigmoid(x + hh).chunk(4, 1)  # g: sigmoid(2a)
                # the state holds 2c: 2 f c + 2 i tanh(a) = f (2c) + 4 i g - 2 i
                c = torch.addcmul(f * state[layers + layer], i, g, value=4).sub_(i, alpha=2)
                h = torch.addcmul(o.neg(), o, torch.sigmoid(c), value=2)  # o tanh(c)
                new[layers + layer] = c
            else:
                x_rz, x_n = x.split([2 * size, size], 1)
                hh_rz, hh_n = hh.split([2 * size, size], 1)
                r, z = torch.sigmoid(x_rz + hh_rz).chunk(2, 1)
                a = torch.addcmul(x_n, r, hh_n + getattr(self, f"b_hn{layer}"))  # 2x tanh's input
                n = torch.sigmoid(a).mul_(2).sub_(1)
                h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            out = self.product(layer, h)
            new[layer] = h
            new[-layers + layer], x = out.split([self.gates, out.shape[1] - self.gates], 1)
        return x, new

    def forward(
        self, feed: Tensor, last: Tensor, noise: Tensor | None, kth: Tensor | None, state: list
    ) -> tuple[Tensor, list[Tensor]]:
        """Runs feed.shape[0] steps for all rows; returns the ids drawn at each step [S, B] and the
        new state. Step t reads feed[t] where it is >= 0, else the id drawn the step before (at
        step 0: `last` [B]). `noise` [S, B, known]: T * Gumbel noise (None: greedy); `kth` [1]:
        the rank of the last character top-k keeps (None: all). Exported, S is fixed: one call
        runs a chunk, so the per-call costs (pytree, torch.cond) are paid once per chunk."""
        if not torch.compiler.is_exporting():
            return self.steps(feed, last, noise, kth, state)

        def branch(top_k: bool):  # an export always gets kth: top-k's sort only where it cuts
            def run(feed, last, noise, kth, *state):
                drawn, new = self.steps(feed, last, noise, kth if top_k else None, list(state))
                return drawn, *(s.contiguous() for s in new)  # (cond's outputs must be dense)

            return run

        operands, cuts = (feed, last, noise, kth, *state), kth[0] < noise.shape[2] - 1
        drawn, *new = torch.cond(cuts, branch(True), branch(False), operands)
        return drawn, new

    def steps(self, feed, last, noise, kth, state) -> tuple[Tensor, list[Tensor]]:
        """`forward` in eager: top-k only if kth is given."""
        given, drawn = (feed >= 0).unbind(0), []
        noises = noise.unbind(0) if noise is not None else [None] * feed.shape[0]
        for t, ids in enumerate(feed.unbind(0)):
            x, state = self.logits(torch.where(given[t], ids, last), state)
            if kth is not None:
                cut = x.sort(1, descending=True).values.index_select(1, kth)
                x = x.masked_fill(x < cut, -math.inf)
            last = torch.argmax(x if noises[t] is None else x + noises[t], 1)
            drawn.append(last)
        return torch.stack(drawn), state


def gumbel_noise(steps: int, rows: int, known: int, temperature: float, generators) -> Tensor:
    """T * Gumbel noise [steps, rows, known]: argmax(logits + noise) draws from softmax(logits / T).
    One generator, or one per row. Small chunks take the log in serial pieces (waking threads costs
    more); the values are u.log().neg().log().neg() * T, as an exported file's user writes it."""
    if len(generators) == 1:
        u = torch.rand([steps, rows, known], generator=generators[0])
    else:
        u = torch.stack([torch.rand([steps, known], generator=g) for g in generators], 1)
    flat = u.view(-1)
    piece = SERIAL_LOG if flat.numel() <= 16 * SERIAL_LOG else flat.numel()
    for at in range(0, flat.numel(), piece):
        flat[at : at + piece].log_().neg_().log_().neg_()
    return u.mul_(temperature)


def seed_generator(seed: int) -> torch.Generator:
    """The generator a seed means everywhere (generate.py, the callback, the exported file)."""
    return torch.Generator().manual_seed(seed)


class Sampler:
    """Chunks of steps on every row: the prompt fed, then a character drawn per step. `step`: a
    loaded export instead of StepNet (it takes every input, zero noise and kth = known - 1 for
    all, in whole chunks)."""

    def __init__(self, net, vocab: Vocab, step=None, state_sizes=None, precision="fp32"):
        self.vocab, self.full = vocab, step is not None
        with torch.no_grad():
            self.step = step if self.full else StepNet(net, vocab.unk_id, precision).eval()
        self.state_sizes = state_sizes or self.step.state_sizes()
        self.device = torch.device("cpu") if self.full else self.step.table.device

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
        """`num_samples` continuations of `prompt`. `generator`: one for the batch, or one per row
        (a row then gets the text it gets alone); None seeds one from torch's global generator.
        `on_step` gets each step's characters (one per row), chunk by chunk."""
        clean_prompt(prompt, self.vocab)
        check_options(self.vocab, length, temperature, top_k, num_samples)
        if generator is None:
            generator = seed_generator(int(torch.randint(2**62, ())))
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        if len(generators) not in (1, num_samples):
            raise CharRNNError(
                f"give one generator, or one per sample ({num_samples}), not {len(generators)}"
            )
        known, device, rows, fed = self.vocab.unk_id, self.device, num_samples, len(prompt) - 1
        steps = fed + length  # the prompt but its last character (draws unused), then the text
        padded = -(-steps // CHUNK) * CHUNK if self.full else steps  # an export: whole chunks
        feed = torch.full([padded, rows], -1, device=device)  # -1: the id drawn the step before
        feed[: fed + 1] = torch.as_tensor(self.vocab.encode(prompt), device=device)[:, None]
        state = [torch.zeros(rows, n, device=device) for n in self.state_sizes]
        kth = torch.tensor([(top_k or known) - 1], device=device) if top_k or self.full else None
        last, pieces = feed[0], []
        for at in range(0, padded, CHUNK):
            chunk, noise = feed[at : at + CHUNK], None  # greedy: no noise (an export takes zeros)
            if temperature > 0:  # (a padded chunk's extra draws come after all that is used)
                noise = gumbel_noise(len(chunk), rows, known, temperature, generators).to(device)
            elif self.full:
                noise = torch.zeros(CHUNK, rows, known)
            drawn, state = self.step(chunk, last, noise, kth, state)
            last = drawn[-1]
            pieces.append(drawn[max(0, fed - at) : steps - at])
            if on_step is not None:
                for column in pieces[-1].tolist():
                    on_step([self.vocab.chars[i] for i in column])
        return [self.vocab.decode(row) for row in torch.cat(pieces).t().cpu()]

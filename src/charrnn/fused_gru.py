"""A GRU layer built around large matrix products, for CPU training speed.

`nn.GRU` on CPU has autograd replay the sequence, a dozen small ops per step. Here backward is
by hand (gate gradients times coefficients saved forward) with one sequence-long weight-gradient
product; products are oneDNN's (prepacked per step) where `onednn_products` says; after an
embedding the input projection is a table lookup; under CPU bf16 autocast the products take bf16
operands (3-5x fp32 on AVX-512-BF16/AMX), parameters, state and gates stay fp32. nn.GRU's
parameters, equations and state-dict keys; short sequences (sampling) and CUDA tensors take
nn.GRU's own path."""

import torch
import torch.nn.functional as F
from torch import nn

MIN_STEPS = 8  # shorter sequences (e.g. sampling, one character per call) go through nn.GRU's C++


def bf16_matmul_supported() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512-BF16, AMX), so bf16 beats fp32. oneDNN's
    own check is also true on plain AVX-512, where it emulates bf16; cpuinfo's flags are not."""
    if not torch.backends.mkldnn.is_available():  # bf16 mm without oneDNN is a slow reference loop
        return False
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def onednn_products(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs the CPU products in `dtype`: bf16 where the CPU multiplies it natively,
    fp32 on x86 with AVX2, where it was measured (MKL runs AVX2 code on AMD: at 64 x 1024 x 3072
    oneDNN's prepacked sgemm is 2.7x MKL's packed on a Zen 5, 1.4x with oneDNN held to AVX2 too);
    elsewhere (ARM) torch.mm."""
    if dtype == torch.bfloat16:
        return bf16_matmul_supported()
    avx2 = torch.cpu.get_capabilities().get("avx2")
    return dtype == torch.float32 and bool(avx2) and torch.backends.mkldnn.is_available()


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """x @ weight.T (+ bias) by oneDNN; `weight` plain (any strides) or prepacked for it."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def row_product(weight: torch.Tensor, rows: int, calls: int, dtype: torch.dtype | None = None):
    """x -> x @ weight.T (+ bias) for `calls` products of `rows`-row inputs. A plain GEMM re-packs
    the weight every call (a third of a 64-row product); oneDNN's prepacked linear packs it once
    (CPU, enough calls, rows > 1). With `dtype` (bf16) the weight is cast once, each product back
    to fp32: on CPU, elementwise ops mixing bf16 and fp32 are several times slower than one cast."""
    result, dtype = weight.dtype, dtype or weight.dtype
    packable = weight.device.type == "cpu" and calls >= MIN_STEPS and rows > 1
    if packable and onednn_products(dtype):
        # 1.4x torch.mm at 64 x 1024 x 3072 in bf16 (near the bf16 peak), 2.7x in fp32 on AMD
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), rows)

        def packed_product(x, bias=None):
            bias = None if bias is None else bias.to(dtype)
            y = onednn_linear(x.to(dtype), packed, bias)
            return y.to(result)

        return packed_product
    # a contiguous right operand is faster than a view; cast and copy in one pass
    transposed = weight.t().to(dtype, memory_format=torch.contiguous_format)

    def product(x, bias=None):
        x = x.to(dtype)
        y = torch.mm(x, transposed) if bias is None else torch.addmm(bias.to(dtype), x, transposed)
        return y.to(result)

    return product


def gradient_product(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """grad.T @ inputs over every position: a weight gradient. In fp32 through oneDNN (1.3x
    torch.mm's MKL at 3072 x 6400 x 1024 on AMD); bf16 torch.mm is oneDNN's already."""
    if grad.device.type == "cpu" and grad.dtype == torch.float32 and onednn_products(grad.dtype):
        return onednn_linear(grad.t(), inputs.t())
    return grad.t().mm(inputs)


class OneDNNLinear(torch.autograd.Function):
    """F.linear of fp32 CPU rows x [N, in], forward and backward through oneDNN: a later layer's
    input projection for the whole sequence, 1.7x F.linear's MKL on AMD (6400 x 1024 -> 3072)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad @ weight
            grad_x = onednn_linear(grad, weight.t())
        if ctx.needs_input_grad[1]:
            grad_w = gradient_product(grad, x)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) over a whole sequence, through OneDNNLinear where the fp32
    products are oneDNN's (no autocast: under it F.linear's bf16 product is oneDNN's already)."""
    fp32 = x.device.type == "cpu" and x.dtype == torch.float32
    if not fp32 or torch.is_autocast_enabled("cpu") or not onednn_products(x.dtype):
        return F.linear(x, weight, bias)
    rows = OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return rows.view(*x.shape[:-1], weight.shape[0])


class GRURecurrence(torch.autograd.Function):
    """One GRU layer's recurrent half, time-major: gi [T, B, 3H] (input projections with bias, in
    the products' dtype), h0 [B, H] (fp32, like state and gates), w_hh, b_hh -> h_1..h_T [T, B, H].
    Forward stores the gate coefficients while r, z, n are in cache: a backward step is one
    broadcast multiply and one product."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, grad_enabled: bool):
        steps, batch, three_h = gi.shape
        size = three_h // 3
        train = grad_enabled and any(ctx.needs_input_grad)  # needs_input_grad ignores no_grad()
        states = h0.new_empty(steps + 1, batch, size)  # h_0..h_T: every h_{t-1} is states[:-1]
        states[0] = h0
        if train:
            coef = h0.new_empty(steps, batch, 3, size)  # d(r, z, n pre-activations of gh) / dh_t
            n_coef = h0.new_empty(steps, batch, size)  # d(n pre-activation of gi) / dh_t
            zs = h0.new_empty(steps, batch, size)  # z, kept for backward (r is only in coef)
        rz_t = h0.new_empty(batch, 2 * size)  # this step's r and z
        recurrent = row_product(w_hh, batch, steps, gi.dtype)  # casts w_hh once per sequence
        for t in range(steps):
            h, gi_t = states[t], gi[t].to(h0.dtype)  # a no-op in fp32
            gh = recurrent(h, b_hh)
            rz = torch.add(gi_t[:, : 2 * size], gh[:, : 2 * size], out=rz_t).sigmoid_()
            r, z = rz[:, :size], rz[:, size:]
            hn = gh[:, 2 * size :]
            n = torch.addcmul(gi_t[:, 2 * size :], r, hn).tanh_()
            h_next = torch.lerp(n, h, z, out=states[t + 1])  # (1 - z) n + z h
            if train:  # the coefficients, from values still in cache
                c, keep = coef[t], 1 - zs[t].copy_(z)
                dn = torch.addcmul(keep, keep, n * n, value=-1, out=n_coef[t])  # (1-z)(1-n²)
                c_n = torch.mul(dn, r, out=c[:, 2])
                c_r = c_n * hn
                torch.addcmul(c_r, c_r, r, value=-1, out=c[:, 0])  # dn hn r (1 - r)
                torch.mul(h_next - n, keep, out=c[:, 1])  # h_next - n = z (h - n)
        if train:
            ctx.save_for_backward(w_hh)
            ctx.product_dtype = gi.dtype
            ctx.states, ctx.coef, ctx.n_coef, ctx.zs = states, coef, n_coef, zs
        return states[1:]

    @staticmethod
    def backward(ctx, grad_out):
        (w_hh,) = ctx.saved_tensors
        states, coef, n_coef, zs = ctx.states, ctx.coef, ctx.n_coef, ctx.zs
        del ctx.states, ctx.coef, ctx.n_coef, ctx.zs
        steps, batch, _, size = coef.shape
        dtype = ctx.product_dtype  # every consumer of these two gradients wants them in it
        grad_gh = torch.empty_like(coef, dtype=dtype)  # gradient of the recurrent pre-activations
        grad_gi_n = torch.empty_like(n_coef, dtype=dtype)
        back = row_product(w_hh.t().contiguous(), batch, steps, dtype)  # g -> g @ w_hh
        carry = torch.zeros_like(n_coef[0])
        for t in range(steps - 1, -1, -1):
            dh = carry + grad_out[t]
            torch.mul(coef[t], dh.unsqueeze(1), out=grad_gh[t])
            torch.mul(n_coef[t], dh, out=grad_gi_n[t])
            carry = back(grad_gh[t].view(batch, 3 * size)).addcmul_(dh, zs[t])
        flat_gh = grad_gh.view(-1, 3 * size)
        grad_gi = grad_w_hh = grad_b_hh = None
        if ctx.needs_input_grad[2]:  # one sequence-long product instead of one per step
            grad_w_hh = gradient_product(flat_gh, states[:-1].reshape(-1, size).to(dtype))
            grad_w_hh = grad_w_hh.to(w_hh.dtype)
        if ctx.needs_input_grad[3]:
            grad_b_hh = flat_gh.sum(0).to(w_hh.dtype)  # fp32 accumulation inside
        if ctx.needs_input_grad[0]:
            grad_gi = torch.cat([grad_gh[:, :, :2].flatten(2), grad_gi_n], dim=-1)
        return grad_gi, carry, grad_w_hh, grad_b_hh, None


def cpu_bf16_autocast(device_type: str) -> bool:
    """Whether CPU autocast to bf16 is on for `device_type`: the one autocast the fused layers run."""
    return (
        device_type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def _fusable_autocast(device_type: str) -> bool:
    """No autocast, or CPU autocast to bf16: the casts GRURecurrence knows (others go to nn.GRU)."""
    return not torch.is_autocast_enabled(device_type) or cpu_bf16_autocast(device_type)


def first_projections(rnn: nn.RNNBase, x: torch.Tensor, embedding=None) -> torch.Tensor:
    """Layer 0's input projections with bias, time-major [T, B, G]. With `embedding`, `x` holds
    ids and each vocabulary row is projected once, not each position: a gather forward and a
    scatter-add backward replace three sequence-long products."""
    w, b, batch_first = rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.batch_first
    if embedding is not None:
        return F.embedding(x.t() if batch_first else x, F.linear(embedding, w, b))
    return projection(x.transpose(0, 1) if batch_first else x, w, b)


class FusedGRU(nn.GRU):
    """Drop-in `nn.GRU` (unidirectional, no projection) whose CPU path is `GRURecurrence`; under
    CPU bf16 autocast it returns fp32 outputs and states, as nn.GRU does there."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bidirectional or self.proj_size or not self.bias:
            raise ValueError("FusedGRU supports unidirectional GRUs with biases and no proj_size")

    def forward(self, input, hx=None, embedding=None):  # noqa: A002 - nn.GRU's signature
        """nn.GRU's forward; with `embedding`, `input` holds ids and the result is that of
        forward(embedding[ids]), with the table lookup of `first_projections`."""
        if embedding is not None:
            small = input.dim() != 2 or input.numel() <= embedding.shape[0]
            if input.is_cuda or small or not _fusable_autocast(input.device.type):
                return self.forward(F.embedding(input, embedding), hx)
            return self._layers(first_projections(self, input, embedding), hx)
        steps = input.shape[1 if self.batch_first else 0] if input.dim() == 3 else 0
        if input.is_cuda or steps < MIN_STEPS or not _fusable_autocast(input.device.type):
            return super().forward(input, hx)
        return self._layers(first_projections(self, input), hx)

    def _layers(self, gi: torch.Tensor, hx):
        """All layers from the first layer's input projections gi [T, B, 3H]."""
        if hx is None:
            hx = gi.new_zeros(self.num_layers, gi.shape[1], self.hidden_size)
        hx = hx.to(self.weight_hh_l0.dtype)  # the state's: fp32 even when gi is a bf16 product
        finals, x = [], None
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.all_weights):
            if layer:  # (dropout with p = 0 or in eval returns x itself)
                gi = projection(F.dropout(x, self.dropout, self.training), w_ih, b_ih)
            x = GRURecurrence.apply(gi, hx[layer], w_hh, b_hh, torch.is_grad_enabled())
            finals.append(x[-1])
        out = x.transpose(0, 1) if self.batch_first else x
        return out, torch.stack(finals)

"""An LSTM layer for CPU bf16 training, built like FusedGRU: under CPU bf16 autocast the per-step
products take oneDNN's prepacked bf16 weights, backward is by hand with one sequence-long
weight-gradient product, after an embedding the input projection is a table lookup; parameters,
state and gates stay fp32. Elsewhere (fp32, CUDA, short sequences) nn.LSTM's own path runs:
oneDNN's fused fp32 LSTM is already faster than a loop."""

import torch
import torch.nn.functional as F
from torch import nn

from charrnn.fused_gru import (
    MIN_STEPS,
    cpu_bf16_autocast,
    first_projections,
    gradient_product,
    row_product,
)


class LSTMRecurrence(torch.autograd.Function):
    """One LSTM layer's recurrent half, time-major: gi [T, B, 4H] (input projections with bias, in
    the products' dtype), h0, c0 [B, H] (fp32), w_hh, b_hh -> h_1..h_T [T, B, H], c_T [B, H]."""

    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh):
        steps, batch, four_h = gi.shape
        size = four_h // 4
        hs, cs = h0.new_empty(steps + 1, batch, size), h0.new_empty(steps + 1, batch, size)
        hs[0], cs[0] = h0, c0
        gates = h0.new_empty(steps, batch, four_h)  # i, f, g, o after their nonlinearities
        tanh_c = h0.new_empty(steps, batch, size)
        recurrent = row_product(w_hh, batch, steps, gi.dtype)
        for t in range(steps):
            a = recurrent(hs[t], b_hh).add_(gi[t].to(h0.dtype))
            act = torch.sigmoid(a, out=gates[t])
            i, f, g, o = act.chunk(4, 1)
            torch.tanh(a[:, 2 * size : 3 * size], out=g)
            c = torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
            torch.mul(o, torch.tanh(c, out=tanh_c[t]), out=hs[t + 1])
        ctx.save_for_backward(w_hh)
        ctx.product_dtype, ctx.saved = gi.dtype, (hs, cs, gates, tanh_c)
        return hs[1:], cs[-1]

    @staticmethod
    def backward(ctx, grad_out, grad_c):
        (w_hh,) = ctx.saved_tensors
        (hs, cs, gates, tanh_c), dtype = ctx.saved, ctx.product_dtype
        del ctx.saved
        steps, batch, four_h = gates.shape
        grad_gates = torch.empty_like(gates, dtype=dtype)  # of the pre-activations
        back = row_product(w_hh.t().contiguous(), batch, steps, dtype)  # g -> g @ w_hh
        carry_h = torch.zeros_like(hs[0])
        carry_c = torch.zeros_like(cs[0]) if grad_c is None else grad_c.clone()
        for t in range(steps - 1, -1, -1):
            i, f, g, o = gates[t].chunk(4, 1)
            dh, tc = carry_h + grad_out[t], tanh_c[t]
            dh_o = dh * o
            dc = carry_c.addcmul_(dh_o, 1 - tc * tc)
            di, df, dg, do = grad_gates[t].chunk(4, 1)
            torch.mul(dc * g, i - i * i, out=di)
            torch.mul(dc * cs[t], f - f * f, out=df)
            torch.mul(dc * i, 1 - g * g, out=dg)
            torch.mul(dh_o - dh_o * o, tc, out=do)  # dh tanh(c) o (1 - o)
            carry_c = dc * f
            carry_h = back(grad_gates[t])
        flat = grad_gates.view(-1, four_h)
        grad_w_hh = grad_b_hh = None
        if ctx.needs_input_grad[3]:  # one sequence-long product instead of one per step
            grad_w_hh = gradient_product(flat, hs[:-1].reshape(-1, hs.shape[2]).to(dtype))
            grad_w_hh = grad_w_hh.to(w_hh.dtype)
        if ctx.needs_input_grad[4]:
            grad_b_hh = flat.sum(0).to(w_hh.dtype)
        return grad_gates, carry_h, carry_c, grad_w_hh, grad_b_hh


class FusedLSTM(nn.LSTM):
    """Drop-in `nn.LSTM` (unidirectional, no projection) whose CPU bf16-autocast path is
    `LSTMRecurrence`, with fp32 outputs and states as nn.LSTM returns there."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bidirectional or self.proj_size or not self.bias:
            raise ValueError("FusedLSTM supports unidirectional LSTMs with biases and no proj_size")

    def forward(self, input, hx=None, embedding=None):  # noqa: A002 - nn.LSTM's signature
        """nn.LSTM's forward; with `embedding`, `input` holds ids (see FusedGRU.forward)."""
        batched = input.dim() == (3 if embedding is None else 2)  # (not an unbatched sequence)
        steps = input.shape[1 if self.batch_first else 0] if batched else 0
        device = (input if embedding is None else embedding).device.type
        if steps < MIN_STEPS or not cpu_bf16_autocast(device):
            x = input if embedding is None else F.embedding(input, embedding)
            return super().forward(x, hx)
        gi = first_projections(self, input, embedding)
        if hx is None:
            zeros = gi.new_zeros(self.num_layers, gi.shape[1], self.hidden_size, dtype=torch.float)
            hx = (zeros, zeros)
        h0, c0 = (s.to(self.weight_hh_l0.dtype) for s in hx)
        finals_h, finals_c, x = [], [], None
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.all_weights):
            if layer:
                gi = F.linear(F.dropout(x, self.dropout, self.training), w_ih, b_ih)
            x, c_n = LSTMRecurrence.apply(gi, h0[layer], c0[layer], w_hh, b_hh)
            finals_h.append(x[-1])
            finals_c.append(c_n)
        out = x.transpose(0, 1) if self.batch_first else x
        return out, (torch.stack(finals_h), torch.stack(finals_c))

"""FusedGRU: the same outputs, final states and gradients as nn.GRU, and its place in CharRNN."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, spy_on_recurrence, train_config
from torch import nn

from charrnn.errors import CharRNNError
from charrnn.fused_gru import FusedGRU, GRURecurrence, bf16_matmul_supported, onednn_products
from charrnn.fused_lstm import FusedLSTM
from charrnn.net import CharRNN
from charrnn.run.config import validate_train


def _pair(layers: int, batch_first: bool, dtype=torch.float64, dropout: float = 0.0):
    torch.manual_seed(layers)
    reference = nn.GRU(5, 7, layers, batch_first=batch_first, dropout=dropout).to(dtype)
    fused = FusedGRU(5, 7, layers, batch_first=batch_first, dropout=dropout).to(dtype)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _run(module, x, h0):
    """Outputs, final state and the gradients of a loss that uses both."""
    x = x.detach().requires_grad_()
    h0 = None if h0 is None else h0.detach().requires_grad_()
    out, h_n = module(x, h0)
    weights = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
    loss = (out.sin() * weights).sum() + (h_n**2).sum()
    inputs = [x, *module.parameters()] + ([] if h0 is None else [h0])
    return out, h_n, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("given_state", [True, False])
def test_matches_nn_gru_in_float64(layers, batch_first, given_state):
    reference, fused = _pair(layers, batch_first)
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    h0 = torch.randn(layers, 3, 7, dtype=torch.float64) if given_state else None
    out_r, h_r, grads_r = _run(reference, x, h0)
    out_f, h_f, grads_f = _run(fused, x, h0)
    assert out_f.shape == out_r.shape and h_f.shape == h_r.shape == (layers, 3, 7)
    torch.testing.assert_close(out_f, out_r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_f, h_r, rtol=1e-12, atol=1e-12)
    assert len(grads_f) == len(grads_r) == 1 + 4 * layers + given_state
    for g_f, g_r in zip(grads_f, grads_r, strict=True):
        torch.testing.assert_close(g_f, g_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cpu", ["this", "arm"])  # arm: no AVX2, so torch.mm, not oneDNN
def test_matches_nn_gru_in_float32_on_a_long_sequence(monkeypatch, cpu):
    if cpu == "arm":
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"asimd": True})
        assert not onednn_products(torch.float32) and not onednn_products(torch.bfloat16)
    reference, fused = _pair(2, True, torch.float32)
    x = torch.randn(4, 60, 5)
    h0 = torch.randn(2, 4, 7)
    out_r, h_r, grads_r = _run(reference, x, h0)
    out_f, h_f, grads_f = _run(fused, x, h0)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_f, h_r, rtol=1e-5, atol=1e-6)
    for g_f, g_r in zip(grads_f, grads_r, strict=True):
        torch.testing.assert_close(g_f, g_r, rtol=1e-4, atol=1e-5)


def test_state_carries_across_calls_like_one_long_call():
    _, fused = _pair(2, True)
    x = torch.randn(2, 10, 5, dtype=torch.float64)
    whole, h_whole = fused(x)
    first, h_mid = fused(x[:, :4])
    second, h_end = fused(x[:, 4:], h_mid)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(h_end, h_whole)


def test_inference_needs_no_graph_and_gives_the_same_output():
    reference, fused = _pair(1, True)
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    with torch.no_grad():
        out_f, h_f = fused(x)
        out_r, h_r = reference(x)
    assert not out_f.requires_grad
    torch.testing.assert_close(out_f, out_r)
    torch.testing.assert_close(h_f, h_r)


def test_dropout_between_layers_only_in_training():
    _, fused = _pair(2, True, dropout=0.5)
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    fused.eval()
    assert torch.equal(fused(x)[0], fused(x)[0])
    fused.train()
    torch.manual_seed(0)
    a = fused(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(a, fused(x)[0])


def test_unsupported_variants_are_refused():
    for kwargs in ({"bidirectional": True}, {"bias": False}):
        with pytest.raises(ValueError):
            FusedGRU(5, 7, **kwargs)


def test_projected_embedding_table_gives_the_same_outputs_and_gradients():
    _, fused = _pair(2, True)
    embedding = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(4, (3, 8))
    h0 = torch.randn(2, 3, 7, dtype=torch.float64)
    results = []
    for run in (lambda: fused(embedding[ids], h0), lambda: fused(ids, h0, embedding=embedding)):
        out, h_n = run()
        loss = (out.sin() * torch.linspace(-1, 1, 7, dtype=out.dtype)).sum() + h_n.sum()
        results.append((out, h_n, torch.autograd.grad(loss, [embedding, *fused.parameters()])))
    (out_a, h_a, grads_a), (out_b, h_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(h_b, h_a)
    for g_b, g_a in zip(grads_b, grads_a, strict=True):
        torch.testing.assert_close(g_b, g_a)


def test_charrnn_impl_chooses_the_layer_and_checkpoints_move_between_them():
    auto = CharRNN(10, "gru", 8, 16, impl="auto").double()
    plain = CharRNN(10, "gru", 8, 16, impl="torch").double()
    assert type(auto.rnn) is FusedGRU and type(plain.rnn) is nn.GRU
    assert type(CharRNN(10, "lstm", 8, 16).rnn) is FusedLSTM
    assert type(CharRNN(10, "lstm", 8, 16, impl="torch").rnn) is nn.LSTM
    plain.load_state_dict(auto.state_dict())  # same keys and shapes
    for ids in (torch.randint(10, (2, 9)), torch.randint(10, (1, 3))):  # table path, plain path
        (logits_a, h_a), (logits_p, h_p) = auto(ids), plain(ids)
        torch.testing.assert_close(logits_a, logits_p)
        torch.testing.assert_close(h_a, h_p)
        grads_a = torch.autograd.grad(logits_a.logsumexp(-1).sum(), list(auto.parameters()))
        grads_p = torch.autograd.grad(logits_p.logsumexp(-1).sum(), list(plain.parameters()))
        for g_a, g_p in zip(grads_a, grads_p, strict=True):
            torch.testing.assert_close(g_a, g_p)


@pytest.mark.parametrize(
    "overrides, ok",
    [
        ((), True),
        (("model.impl=torch",), True),
        (("model.impl=fused",), True),
        (("model=lstm",), True),
        (("model=lstm", "model.impl=fused"), True),
        (("model.impl=fast",), False),
    ],
)
def test_config_validates_model_impl(tmp_path, overrides, ok):
    cfg = train_config(tmp_path, *TINY, *overrides)
    if ok:
        validate_train(cfg)
    else:
        with pytest.raises(CharRNNError, match=r"^model\.impl: "):
            validate_train(cfg)


def test_adam_steps_follow_the_nn_gru_model():
    torch.manual_seed(0)
    nets = [CharRNN(12, "gru", 8, 16, impl=impl) for impl in ("auto", "torch")]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [torch.optim.Adam(net.parameters(), lr=1e-2) for net in nets]
    ids = torch.randint(12, (6, 21))
    losses = [[], []]
    for _ in range(5):
        for net, optimizer, curve in zip(nets, optimizers, losses, strict=True):
            logits, _ = net(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), ids[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
    assert losses[0][-1] < losses[0][0]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def _close_in_bf16(actual, expected):
    """bf16 keeps 8 significant bits (2^-8 relative): allow 8 such errors of the tensor's scale
    for roundings of operands and products compounded over 24 steps and 2 layers."""
    tolerance = expected.abs().max().item() / 32
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance)


def _spy_on_recurrence(monkeypatch):
    return spy_on_recurrence(monkeypatch, GRURecurrence)


def _refuse_nn_gru(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nn.GRU.forward was called")

    monkeypatch.setattr(nn.GRU, "forward", refuse)


@pytest.mark.parametrize("entry", ["forward", "ids"])
def test_bf16_autocast_matches_fp32_nn_gru(monkeypatch, entry):
    torch.manual_seed(0)
    reference = nn.GRU(16, 32, 2, batch_first=True)
    fused = FusedGRU(16, 32, 2, batch_first=True)
    fused.load_state_dict(reference.state_dict())
    embedding = torch.randn(5, 16, requires_grad=True)
    ids = torch.randint(5, (3, 24))  # more positions than rows: the ids path takes its table
    h0 = torch.randn(2, 3, 32, requires_grad=True)

    def run(module, autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if autocast and entry == "ids":
                out, h_n = module(ids, h0, embedding=embedding)
            else:
                out, h_n = module(embedding[ids], h0)
        loss = (out.sin() * torch.linspace(-1, 1, 32)).sum() + (h_n**2).sum()
        return out, h_n, torch.autograd.grad(loss, [embedding, h0, *module.parameters()])

    out_r, h_r, grads_r = run(reference, False)
    _refuse_nn_gru(monkeypatch)
    seen = _spy_on_recurrence(monkeypatch)
    out_f, h_f, grads_f = run(fused, True)
    assert seen == [torch.bfloat16, torch.bfloat16]  # both layers' products in bf16
    assert out_f.dtype == h_f.dtype == torch.float32  # the state stays fp32, as in nn.GRU
    _close_in_bf16(out_f, out_r)
    _close_in_bf16(h_f, h_r)
    assert len(grads_f) == 2 + 8
    for g_f, g_r in zip(grads_f, grads_r, strict=True):
        assert g_f.dtype == torch.float32
        _close_in_bf16(g_f, g_r)


def test_other_autocast_dtypes_take_the_nn_gru_path(monkeypatch):
    _, fused = _pair(1, True, torch.float32)
    seen = _spy_on_recurrence(monkeypatch)
    with torch.autocast("cpu", dtype=torch.float16):
        out, _ = fused(torch.randn(2, 12, 5))
    assert seen == [] and out.shape == (2, 12, 7)


def test_charrnn_learns_under_bf16_autocast_on_the_fused_path(monkeypatch):
    torch.manual_seed(0)
    text = "the cat sat on the mat. " * 20
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    windows = ids[: 8 * 33].view(8, 33)  # batch 8, 32 steps of input and target
    net = CharRNN(len(vocab), "gru", 16, 32, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    _refuse_nn_gru(monkeypatch)
    seen = _spy_on_recurrence(monkeypatch)
    losses = []
    for _ in range(30):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = net(windows[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, len(vocab)), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert logits.dtype == torch.bfloat16  # the head is an autocast product
    assert set(seen) == {torch.bfloat16} and len(seen) == 2 * 30
    assert all(p.grad.dtype == torch.float32 for p in net.parameters())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_matmul_support_follows_the_cpu_flags(monkeypatch):
    assert isinstance(bf16_matmul_supported(), bool)
    for flags, expected in [
        ({"avx2": True, "avx512_f": True, "avx512_bf16": False}, False),  # e.g. Skylake-X
        ({"avx2": True}, False),
        ({"avx2": True, "avx512_f": True, "avx512_bf16": True}, True),  # AMD Zen 4, Cooper Lake
        ({"avx2": True, "avx512_f": True, "amx_bf16": True, "amx_tile": True}, True),  # SPR
    ]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        assert bf16_matmul_supported() is expected
        assert onednn_products(torch.bfloat16) is expected
        assert onednn_products(torch.float32) is ("avx2" in flags)  # where it was measured

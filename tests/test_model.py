"""The network and its LightningModule: shapes, the ln(V) sanity check, learning, state carrying."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from charrnn.data import CharDataModule
from charrnn.model import CharLM
from charrnn.net import CharRNN

VOCAB = "\n !,.:?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _module(cell="gru", **model):
    settings = dict(cell=cell, embedding_dim=16, rnn_units=32, num_layers=2, dropout=0.1) | model
    optimizer = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}
    return CharLM(vocab=VOCAB, model=settings, optimizer=optimizer)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forward_shapes_and_hidden_state(cell):
    net = CharRNN(60, cell, embedding_dim=8, rnn_units=16, num_layers=2)
    logits, hidden = net(torch.randint(0, 60, (3, 7)))
    assert logits.shape == (3, 7, 60)
    h = hidden[0] if cell == "lstm" else hidden
    assert h.shape == (2, 3, 16)
    init = net.init_hidden(3)
    assert (init[0] if cell == "lstm" else init).shape == (2, 3, 16)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_untrained_loss_is_close_to_log_vocab_size(cell):
    torch.manual_seed(0)
    module = _module(cell)
    x = torch.randint(0, len(VOCAB), (8, 50))
    loss_sum, count, _ = module._loss_sum((x, x.roll(-1, 1)), None)
    loss = (loss_sum / count).item()
    assert abs(loss - math.log(module.vocab.size)) < 0.1


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    module = _module(dropout=0.0)
    optimizer = module.configure_optimizers()
    x = torch.randint(0, len(VOCAB), (4, 30))
    batch = (x, x.roll(-1, 1))
    losses = []
    for _ in range(150):
        loss_sum, count, _ = module._loss_sum(batch, None)
        loss = loss_sum / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_checkpointed_hyperparameters_are_plain_types():
    module = _module()
    plain = (str, int, float, bool, type(None))

    def check(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and check(v) for k, v in value.items())
        return isinstance(value, plain)

    assert check(dict(module.hparams))  # so torch.load(..., weights_only=True) can read them
    assert module.hparams.vocab == VOCAB


def test_val_loss_w256_scores_every_window_from_a_zero_state(corpus):
    """val/loss_w<width>: the mean over the val text's windows, each from a zero state; val/loss
    (state carried) is a different number over the same characters."""
    data = CharDataModule(path=str(corpus), seq_length=20, batch_size=8, val_window=64)
    data.setup("fit")
    torch.manual_seed(0)
    module = CharLM(vocab=data.vocab.chars, model=_module().hparams.model, optimizer={})
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    total = count = 0
    with torch.no_grad():
        module.eval()
        for x, y in data.val_dataloader()[1]:
            logits, _ = module.net(x)  # a zero state for every window
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += int((y >= 0).sum())
    assert count == len(data.val_ids)
    assert abs(metrics["val/loss_w64"] - total / count) < 1e-5
    assert abs(metrics["val/loss_w64"] - metrics["val/loss"]) > 1e-4


def _regularised(cell: str, impl: str, layers: int, **drops) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(20, cell, 8, 16, layers, impl=impl, **drops)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("cell, impl", [("gru", "auto"), ("gru", "torch"), ("lstm", "auto")])
def test_weight_drop_masks_recurrent_weights_once_per_batch_and_only_in_training(cell, impl, bf16):
    net = _regularised(cell, impl, 2, weight_drop=0.5)
    ids = torch.randint(0, 20, (3, 12))
    net.eval()
    reference, _ = net(ids)
    net.train()  # weight drop alone: no other dropout, so any change comes from W_hh's mask
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out, _ = net(ids)
    assert not torch.allclose(out.float(), reference)
    out.float().sum().backward()
    for k in range(2):  # a dropped weight gets no gradient: about half of each W_hh
        zeros = (getattr(net.rnn, f"weight_hh_l{k}").grad == 0).float().mean().item()
        assert 0.35 < zeros < 0.65
        assert getattr(net.rnn, f"weight_ih_l{k}").grad.count_nonzero() > 0.9 * 16 * 3 * 8
    net.eval()
    assert torch.equal(net(ids)[0], reference)  # the weights themselves are untouched


def test_locked_dropout_draws_one_mask_per_sequence_and_is_off_in_eval():
    net = _regularised("gru", "auto", 1, locked_dropout=True)
    ones = torch.ones(4, 30, 8)
    net.train()
    mask = net._dropout(0.5, ones)
    assert torch.equal(mask, mask[:, :1].expand_as(mask))  # the same at every step
    assert not torch.equal(mask[0], mask[1])  # another for each sequence
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    net.locked = False
    per_step = net._dropout(0.5, ones)
    assert not torch.equal(per_step, per_step[:, :1].expand_as(per_step))
    net.eval()
    assert net._dropout(0.5, ones) is ones


@pytest.mark.parametrize("cell, impl", [("gru", "auto"), ("gru", "torch"), ("lstm", "auto")])
def test_locked_dropout_between_layers_runs_them_one_by_one_with_the_same_result(cell, impl):
    """Layer by layer with the mask at p = 0 equals the stacked layer; at p > 0 the mask between
    them is per sequence, and every dropout's mask is (embedding, between layers, output)."""
    net = _regularised(cell, impl, 2, locked_dropout=True, dropout=0.5, weight_drop=0.3)
    x = torch.randn(3, 12, 8)
    hidden = net.init_hidden(3)
    stacked = net.eval().rnn(x, hidden)
    masks, dropout = [], net._dropout
    net._dropout = lambda p, x: masks.append(dropout(p, torch.ones_like(x))) or x  # no mask
    net.train()
    net.weight_drop = 0.0
    by_layer = net._by_layer(x, hidden)
    torch.testing.assert_close(by_layer[0], stacked[0])
    for got, want in zip(
        by_layer[1] if cell == "lstm" else [by_layer[1]],
        stacked[1] if cell == "lstm" else [stacked[1]],
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    (mask,) = masks  # the one between the two layers
    assert mask.shape == (3, 12, 16) and torch.equal(mask, mask[:, :1].expand_as(mask))
    net._dropout = dropout
    net.weight_drop = 0.3
    out, _ = net(torch.randint(0, 20, (3, 12)))  # through forward: the by-layer path, training
    out.sum().backward()
    assert net.rnn.weight_hh_l1.grad is not None and (net.rnn.weight_hh_l1.grad == 0).any()

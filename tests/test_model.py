"""The network and its LightningModule: shapes, the ln(V) sanity check, learning, state carrying."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from charrnn.data import CharDataModule
from charrnn.model import CharLM, detach_hidden
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
    assert not (detach_hidden(hidden)[0] if cell == "lstm" else detach_hidden(hidden)).requires_grad


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

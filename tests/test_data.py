"""CharDataModule: split, windows, stateful streams, validation coverage, bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn.data import (
    CharDataModule,
    Shuffle,
    ShuffledWindows,
    StreamBatches,
    StreamOrder,
    WindowBatches,
    split_ids,
)
from charrnn.errors import CharRNNError


def test_split_is_contiguous_with_the_last_fraction_for_validation():
    ids = np.arange(1_115_394)
    train, val = split_ids(ids, 0.1)
    assert len(train) == 1_003_854 and len(val) == 111_540  # nanoGPT's tiny-Shakespeare split
    assert train[-1] + 1 == val[0]


def test_windows_are_input_and_target_shifted_by_one():
    ids = np.arange(1000, dtype=np.int64)
    windows = WindowBatches(ids, seq_length=10)
    x, y = windows[(3, [0, 5])]
    assert x.shape == y.shape == (2, 10) and x.dtype == torch.int64
    assert x[0].tolist() == list(range(3, 13)) and y[0].tolist() == list(range(4, 14))
    assert x[1, 0].item() == 3 + 50


def test_shuffled_windows_cover_each_window_once_per_epoch_and_drop_the_partial_batch():
    torch.manual_seed(0)
    windows = WindowBatches(np.arange(1001), seq_length=10)  # 99 windows
    batches = list(ShuffledWindows(windows, batch_size=16, shift=True))
    assert len(batches) == 6  # 99 // 16, the last partial batch dropped
    seen = [w for _, batch in batches for w in batch]
    assert len(seen) == len(set(seen)) == 96 and all(len(b) == 16 for _, b in batches)
    assert len({offset for offset, _ in batches}) == 1
    sampler = ShuffledWindows(windows, 16, True, seed=3)
    epochs = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert len({batches[0][0] for batches in epochs}) > 1  # window boundaries move between epochs
    assert epochs[0][0][1] != epochs[1][0][1]  # reshuffled every epoch
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # an epoch's order depends only on (seed, epoch)


@pytest.mark.parametrize("n", [1, 2, 3, 99, 4096, 100_003])
def test_shuffle_is_a_random_order_of_every_window_read_a_slice_at_a_time(n):
    order = Shuffle(n, torch.Generator().manual_seed(n))[0:n]
    assert sorted(order) == list(range(n))
    pieces = Shuffle(n, torch.Generator().manual_seed(n))
    assert [w for k in range(0, n, 7) for w in pieces[k : k + 7]] == order
    if n > 1000:  # another seed, another order; neighbours as far apart as random pairs (n / 3)
        assert Shuffle(n, torch.Generator().manual_seed(0))[0:n] != order
        assert 0.3 < np.abs(np.diff(order)).mean() / n < 0.37


def test_ddp_ranks_take_disjoint_batches():
    windows = WindowBatches(np.arange(2001), seq_length=10)
    shards = []
    for rank in range(2):
        torch.manual_seed(0)
        shards.append([w for _, b in ShuffledWindows(windows, 8, True, rank, 2) for w in b])
    assert len(shards[0]) == len(shards[1]) and not set(shards[0]) & set(shards[1])


def test_streams_continue_row_by_row_and_predict_every_character_once():
    ids = np.arange(1, 1002, dtype=np.int64)  # 1001 ids, 1000 targets
    streams = StreamBatches(ids, rows=3, seq_length=50)
    batches = [streams[item] for item in StreamOrder(streams, shift=False)]
    targets = torch.cat([y for _, y in batches], dim=1)
    assert sorted(targets[targets >= 0].tolist()) == ids[1:].tolist()
    for (x0, y0), (x1, _) in zip(batches, batches[1:], strict=False):
        live = y0[:, -1] >= 0
        assert torch.equal(x1[live, 0], y0[live, -1])  # window k+1 of row r starts where k ended
        inner = y0[:, :-1] >= 0
        assert torch.equal(x0[:, 1:][inner], y0[:, :-1][inner])  # targets are inputs shifted by one


def _module(path: Path, **overrides) -> CharDataModule:
    settings = dict(path=str(path), seq_length=20, batch_size=8, val_streams=4) | overrides
    module = CharDataModule(**settings)
    module.prepare_data()
    module.setup("fit")
    return module


def test_datamodule_batches_and_validation_covers_the_val_text_once(corpus: Path):
    module = _module(corpus)
    text = corpus.read_text()
    assert module.vocab.chars == "".join(sorted(set(text)))
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == y.shape == (8, 20)
    streams, windows = module.val_dataloader()  # state carried; each window from a zero state
    val_text = text[int(len(text) * 0.9) :]
    for loader, join in ((streams, 1), (windows, 0)):
        val_targets = torch.cat([y for _, y in loader], dim=join)
        val_targets = val_targets[val_targets >= 0]
        assert len(val_targets) == len(module.val_ids) == len(val_text)
        assert module.vocab.decode(val_targets.sort().values) == "".join(sorted(val_text))
    # the windows tile the val text in order: val_window targets each (the last padded), as many
    # per batch as fit in a training batch's 8 x 20 positions (at least one)
    for width, tiled in ((256, module), (32, _module(corpus, val_window=32))):
        batches = list(tiled.val_dataloader()[1])
        assert all(x.shape == y.shape == (max(1, 160 // width), width) for x, y in batches[:-1])
        targets = torch.cat([y for _, y in batches]).flatten()
        assert tiled.vocab.decode(targets[targets >= 0]) == val_text
    assert _module(corpus, val_window=None).val_dataloader()[1:] == []


def test_stateful_training_reads_batch_size_contiguous_streams(corpus: Path):
    module = _module(corpus, stateful=True, shift_windows=False)
    batches = list(module.train_dataloader())
    assert all(x.shape[0] == 8 for x, _ in batches)
    (_x0, y0), (x1, _) = batches[0], batches[1]
    assert torch.equal(x1[:, 0], y0[:, -1])  # row r of batch k+1 starts where batch k ended


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("short text", {}, "fewer than one window of data.seq_length\\+1 = 21"),
        (
            "x" * 200,
            {"val_frac": 0.05},
            "validation split .* fewer than one window of data.seq_length\\+1 = 21",
        ),
        ("x" * 400, {"batch_size": 64}, "fewer than one batch of data.batch_size=64"),
    ],
)
def test_too_little_text_is_one_clear_error(tmp_path: Path, text, overrides, message):
    path = tmp_path / "small.txt"
    path.write_text(text)
    with pytest.raises(CharRNNError, match=message):
        _module(path, **overrides)

"""The DataModule: corpus → vocabulary → train windows (shuffled or stateful streams) and val streams."""

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from charrnn.corpus import encode_corpus, locate_corpus, release_pages
from charrnn.errors import CharRNNError


def split_ids(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous: the last `val_frac` of the text is validation (nanoGPT's tiny-Shakespeare split)."""
    n_train = int(len(ids) * (1.0 - val_frac))
    return ids[:n_train], ids[n_train:]


class WindowBatches(Dataset):
    """Non-overlapping windows of seq_length+1 ids, indexed by (grid offset, window numbers): a
    batch is one numpy gather, and each epoch can move the boundaries. Targets past the end: -100."""

    def __init__(self, ids: np.ndarray, seq_length: int):
        self.ids, self.seq_length = ids, seq_length

    def __len__(self) -> int:  # the windows that fit at any offset
        return (len(self.ids) - self.seq_length) // self.seq_length

    def __getitem__(self, item: tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        offset, windows = item
        starts = offset + np.asarray(windows, dtype=np.int64) * self.seq_length
        return _inputs_targets(self.ids, starts[:, None] + np.arange(self.seq_length + 1))


class EpochOrder(Sampler):
    """A sampler of `length` batches that knows its epoch (Lightning calls set_epoch) and can start
    one part-way, in the same order, at the (epoch, batches done) a ResumableLoader checkpointed."""

    def __init__(self, length: int, seq_length: int, shift: bool, seed: int):
        self.length, self.seq_length, self.shift, self.seed = length, seq_length, shift, seed
        self.epoch, self.start, self.resume = 0, 0, None  # resume: (epoch, batches done) or None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def begin_epoch(self) -> int:
        """The batch this epoch starts at: 0, or where a checkpoint of the same epoch stopped."""
        resume, self.resume = self.resume, None
        self.start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return self.start

    def generator_and_offset(self) -> tuple[torch.Generator, int]:
        """The epoch's random stream, a function of (seed, epoch) alone (the same on every rank and
        after a resume), and its grid offset: random in [0, seq_length) with `shift`, else 0."""
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        offset = int(torch.randint(self.seq_length, (), generator=generator)) if self.shift else 0
        return generator, offset


class Shuffle:
    """A random order of range(n), computed a slice at a time: a 4-round Feistel network (a
    bijection of [0, 4^half)) whose outputs past n are mapped again until they land inside (cycle
    walking). The 10M windows of a gigabyte need no 40 MB index array (torch.randperm's)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.half = n, max(1, ((n - 1).bit_length() + 1) // 2)
        self.keys = [np.uint64(k) for k in torch.randint(2**62, (4,), generator=generator)]

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        half, mask = np.uint64(self.half), np.uint64((1 << self.half) - 1)
        left, right = x >> half, x & mask
        for key in self.keys:  # F(right): the high half of a multiplicative hash (mod 2^64)
            mixed = ((right ^ key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
            left, right = right, left ^ (mixed & mask)
        return (left << half) | right

    def __getitem__(self, part: slice) -> list[int]:
        span = range(self.n)[part]
        out = self._rounds(np.arange(span.start, span.stop, span.step, dtype=np.uint64))
        while (outside := out >= self.n).any():
            out[outside] = self._rounds(out[outside])
        return out.tolist()


class ShuffledWindows(EpochOrder):
    """One item per batch: the epoch's grid offset and `batch_size` shuffled window numbers.
    The order is the same on every rank; rank r of `world` takes every world-th batch."""

    def __init__(
        self, windows: WindowBatches, batch_size: int, shift: bool, rank=0, world=1, seed=0
    ):
        super().__init__(len(windows) // batch_size // world, windows.seq_length, shift, seed)
        self.windows, self.batch_size, self.rank, self.world = windows, batch_size, rank, world

    def __iter__(self):
        generator, offset = self.generator_and_offset()
        order = Shuffle(len(self.windows), generator)
        for k in range(self.rank + self.start * self.world, len(self) * self.world, self.world):
            yield offset, order[k * self.batch_size : (k + 1) * self.batch_size]


class StreamBatches(Dataset):
    """The text as `rows` contiguous streams, `seq_length` targets per batch: batch k+1 of a row
    continues batch k (truncated BPTT). Indexed by (offset, k); targets past the end are -100
    (ignored). DDP rank r of `world` gets rows r, r+world, ...: each rank keeps whole streams."""

    def __init__(self, ids: np.ndarray, rows: int, seq_length: int, rank=0, world=1):
        self.ids, self.seq_length, self.rank, self.world = ids, seq_length, rank, world
        self.rows = max(1, min(rows, len(ids) - 1))
        self.length = math.ceil((len(ids) - 1) / self.rows)  # targets per row at offset 0

    def __len__(self) -> int:
        return math.ceil(self.length / self.seq_length)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        offset, k = item
        cols = np.arange(k * self.seq_length, min((k + 1) * self.seq_length, self.length) + 1)
        pos = offset + np.arange(self.rank, self.rows, self.world)[:, None] * self.length + cols
        return _inputs_targets(self.ids, pos)


def _inputs_targets(ids: np.ndarray, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids at positions pos [rows, T + 1] as inputs and targets; targets past the end: -100.
    A row at a time: a mapped read faults in the large folio around it (~1.5 MB), let go at once."""
    block = np.empty(pos.shape, dtype=np.int64)
    for row, where in enumerate(np.minimum(pos, len(ids) - 1)):
        block[row] = ids[where]
        release_pages(ids)
    targets = block[:, 1:].copy()
    targets[pos[:, 1:] >= len(ids)] = -100
    return torch.from_numpy(block[:, :-1]), torch.from_numpy(targets)


class StreamOrder(EpochOrder):
    """Batches of a StreamBatches in order (DDP ranks share out its rows, not batches)."""

    def __init__(self, streams: StreamBatches, shift: bool, seed: int = 0):
        super().__init__(len(streams), streams.seq_length, shift, seed)

    def __iter__(self):
        offset = self.generator_and_offset()[1]
        yield from ((offset, k) for k in range(self.start, len(self)))


class ResumableLoader(DataLoader):
    """Counts the batches handed to training this epoch (exact whatever workers prefetch); Lightning
    keeps state_dict() in checkpoints, so a mid-epoch resume skips exactly those batches."""

    def __iter__(self):
        self.consumed, self.consumed_epoch = self.sampler.begin_epoch(), self.sampler.epoch
        for batch in super().__iter__():
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict:
        # the epoch the count belongs to: between epochs the sampler is already on the next one
        epoch = getattr(self, "consumed_epoch", self.sampler.epoch)
        return {"epoch": epoch, "batches_done": getattr(self, "consumed", 0)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume = (int(state["epoch"]), int(state["batches_done"]))


class CharDataModule(L.LightningDataModule):
    """Owns the corpus files, the vocabulary and the batching of train and validation text."""

    def __init__(
        self,
        path: str | None = None,
        cache_dir: str = "data",
        url: str = "",
        sha256: str | None = None,
        download_timeout: float = 30.0,
        separator: str = "\n\n",
        encoding: str = "utf-8",
        val_frac: float = 0.1,
        seq_length: int = 100,
        batch_size: int = 64,
        val_streams: int = 16,
        val_window: int | None = 256,
        stateful: bool = False,
        shift_windows: bool = True,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.vocab = self.train_ids = self.val_ids = self.files = None  # set by setup()

    def prepare_data(self) -> None:
        """The corpus files, downloaded and verified once per process (a cached download is hashed
        once, however often Lightning and setup() call this)."""
        if self.files is None:
            h = self.hparams
            self.files = locate_corpus(h.path, h.cache_dir, h.url, h.sha256, h.download_timeout)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        h = self.hparams
        self.prepare_data()
        path = self.corpus_path = h.path or self.files[0]  # what messages call the corpus
        vocab, ids = encode_corpus(self.files, h.separator, h.encoding)
        window, (train_ids, val_ids) = h.seq_length + 1, split_ids(ids, h.val_frac)
        for name, part in (("training", train_ids), ("validation", val_ids)):
            if len(part) < window:
                raise CharRNNError(
                    f"the {name} split of {path} has {len(part)} of its {len(ids)} characters, "
                    f"fewer than one window of data.seq_length+1 = {window} (data.val_frac="
                    f"{h.val_frac}); use more text, another data.val_frac or a smaller data.seq_length"
                )
        self.vocab, self.train_ids, self.val_ids = vocab, train_ids, val_ids
        self.train_windows = WindowBatches(train_ids, h.seq_length)
        if len(self.train_windows) < h.batch_size:
            raise CharRNNError(
                f"the training split has {len(self.train_windows)} windows, fewer than one batch of "
                f"data.batch_size={h.batch_size}; use more text or a smaller data.batch_size"
            )
        # the val text is predicted from the last train character on: every val character is a target
        self.val_text = ids[len(train_ids) - 1 :]

    def _rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        (rank, world), h = self._rank_world(), self.hparams
        if h.stateful:
            dataset = StreamBatches(self.train_ids, h.batch_size * world, h.seq_length, rank, world)
            sampler = StreamOrder(dataset, h.shift_windows, h.seed)
        else:
            dataset = self.train_windows
            sampler = ShuffledWindows(dataset, h.batch_size, h.shift_windows, rank, world, h.seed)
        return _loader(dataset, sampler, ResumableLoader, num_workers=h.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        """The val text as streams with the state carried (val/loss) and, with data.val_window, as
        windows each from a zero state (val/loss_w<width>)."""
        (rank, world), h = self._rank_world(), self.hparams
        streams = StreamBatches(self.val_text, h.val_streams * world, h.seq_length, rank, world)
        loaders = [_loader(streams, StreamOrder(streams, False))]
        if width := h.get("val_window"):  # every character once: the last window may be short
            mine = range(rank, math.ceil((len(self.val_text) - 1) / width), world)
            rows = max(1, h.batch_size * h.seq_length // width)  # peak memory: training's, no more
            batches = [(0, mine[i : i + rows]) for i in range(0, len(mine), rows)]
            loaders.append(_loader(WindowBatches(self.val_text, width), batches))
        return loaders


def _loader(dataset, sampler, kind=DataLoader, **options) -> DataLoader:
    """A loader of whole batches with a private generator: each iterator draws a worker seed from
    it, and the global stream (dropout's) must not move when a resumed run makes iterators."""
    generator = torch.Generator().manual_seed(0)
    return kind(dataset, sampler=sampler, batch_size=None, generator=generator, **options)

"""encode_corpus: vectorised encoding that matches a plain Python encoding, and the ids cache."""

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import is_mapped, make_text

import charrnn.corpus as corpus
import charrnn.data as data
import charrnn.files as files
from charrnn.corpus import encode_corpus, ids_cache_path
from charrnn.data import WindowBatches

MIXED = "é—😀ü€"  # 2-, 3- and 4-byte UTF-8


def _mixed_text(chars: int) -> str:
    text = make_text(chars)
    return "".join(c + (MIXED[i % len(MIXED)] if i % 37 == 0 else "") for i, c in enumerate(text))


@pytest.fixture
def small_slices(monkeypatch):
    """Decodes in slices that split characters."""
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 1001)


def test_encoding_matches_a_character_by_character_encoding(tmp_path, small_slices):
    text = _mixed_text(20_000)
    path = tmp_path / "mixed.txt"
    path.write_text(text, encoding="utf-8")
    vocab, ids = encode_corpus([path], cache=False)
    assert vocab.chars == "".join(sorted(set(text)))
    expected = [vocab.chars.index(c) for c in text]
    assert ids.dtype == np.uint8 and ids.tolist() == expected
    assert vocab.decode(ids) == text
    assert [p.name for p in tmp_path.iterdir()] == ["mixed.txt"]  # cache=False writes nothing


def test_second_run_maps_the_cache_beside_the_corpus(tmp_path, small_slices, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(_mixed_text(5_000), encoding="utf-8")
    vocab, ids = encode_corpus([path])
    cache = ids_cache_path([path])
    assert cache.parent == tmp_path and cache.is_file() and cache.name.startswith(".corpus.txt.")
    assert not list(tmp_path.glob("*.part"))

    def no_encoding(*args):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(corpus, "_joined", no_encoding)
    vocab2, ids2 = encode_corpus([path])
    assert is_mapped(ids2)  # mapped read-only, not read in
    assert vocab2 == vocab and ids2.dtype == ids.dtype and np.array_equal(ids2, ids)


def test_a_changed_corpus_gets_a_new_cache_and_the_old_one_goes(tmp_path, small_slices):
    path = tmp_path / "corpus.txt"
    path.write_text("first version of the text\n", encoding="utf-8")
    encode_corpus([path])
    old = ids_cache_path([path])
    path.write_text("second, different version\n", encoding="utf-8")
    vocab, ids = encode_corpus([path])
    new = ids_cache_path([path])
    assert new != old and new.is_file() and not old.exists()
    assert not old.with_suffix(".vocab").exists() and new.with_suffix(".vocab").is_file()
    assert vocab.decode(ids) == "second, different version\n"


def test_a_read_only_corpus_directory_costs_only_the_cache(
    tmp_path, small_slices, monkeypatch, caplog
):
    path = tmp_path / "corpus.txt"
    path.write_text("some text to encode\n", encoding="utf-8")

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # root ignores chmod
    with caplog.at_level(logging.INFO, logger="charrnn.corpus"):
        vocab, ids = encode_corpus([path])
    assert vocab.decode(ids) == "some text to encode\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]
    assert "not caching" in caplog.text


def test_a_damaged_cache_is_replaced(tmp_path, small_slices, caplog):
    path = tmp_path / "corpus.txt"
    path.write_text("text whose cache gets damaged\n", encoding="utf-8")
    cache = ids_cache_path([path])
    cache.write_bytes(b"\x93NUMPY not really an array")
    cache.with_suffix(".vocab").write_bytes(b"abc")
    with caplog.at_level(logging.WARNING, logger="charrnn.corpus"):
        vocab, ids = encode_corpus([path])
    assert "unreadable ids cache" in caplog.text
    assert vocab.decode(ids) == "text whose cache gets damaged\n"
    _, ids2 = encode_corpus([path])  # the rewritten cache is good
    assert np.array_equal(ids2, ids)


def _mapped_rss_kb(path: Path) -> int:
    """This process's resident kB of its mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_reading_windows_leaves_no_pages_of_the_cache_mapped(tmp_path, small_slices, monkeypatch):
    """A gigabyte corpus's reads would otherwise add ~100 MB of RSS a batch (large folios): the
    pages are let go after each window, so at most one window's folio is ever mapped."""
    path = tmp_path / "corpus.txt"
    path.write_text(_mixed_text(200_000), encoding="utf-8")
    encode_corpus([path])
    _, ids = encode_corpus([path])  # the mapped cache
    cache = ids_cache_path([path])
    ids[::4096].sum()  # a read that faults pages in, as a batch's does
    assert _mapped_rss_kb(cache) > 0
    released = []
    monkeypatch.setattr(data, "release_pages", lambda a: released.append(corpus.release_pages(a)))
    inputs, _ = WindowBatches(ids, 100)[0, list(range(64))]
    assert _mapped_rss_kb(cache) == 0 and len(released) == len(inputs) == 64


def test_a_file_is_hashed_again_only_when_its_size_or_mtime_changed(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(5_000), encoding="utf-8")
    os.utime(path, (1e9, 1e9))  # changed long ago (one changed within 2 s is always re-read)
    first = ids_cache_path([path])
    read = []
    file_digest = hashlib.file_digest
    monkeypatch.setattr(
        hashlib, "file_digest", lambda f, name: read.append(f) or file_digest(f, name)
    )
    assert ids_cache_path([path]) == first and not read  # the digest memo beside it
    path.write_text(make_text(5_000, seed=1), encoding="utf-8")  # same size, other text
    os.utime(path, (2e9, 2e9))
    assert ids_cache_path([path]) != first and len(read) == 1
    (tmp_path / ".corpus.txt.digests.json").write_text('{"x": 1}')  # damaged: hash again
    assert ids_cache_path([path]) != first and len(read) == 2

"""Vocabulary and corpus reading: round trips, vectorised encoding, each bad file's one-line error."""

from pathlib import Path

import numpy as np
import pytest

from charrnn import corpus
from charrnn.corpus import corpus_files, encode_corpus
from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab


def test_vocab_is_sorted_characters_plus_unknown_and_round_trips():
    vocab = Vocab("".join(sorted(set("hello, wörld\n"))))
    assert vocab.chars == "\n ,dehlorwö"
    assert vocab.unk_id == len(vocab.chars) and vocab.size == len(vocab.chars) + 1
    ids = vocab.encode("hello wörld")
    assert ids.dtype == np.int32 and vocab.decode(ids) == "hello wörld"
    assert vocab.encode("hex").tolist()[-1] == vocab.unk_id
    assert vocab.unknown("hexagon") == ["x", "a", "g", "n"]


def test_encode_corpus_matches_python_encoding_including_multibyte(tmp_path: Path):
    text = "ROMEO: ¿qué? naïve — 日本語 🎭\n" * 50
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    vocab, ids = encode_corpus([path])
    assert vocab.chars == "".join(sorted(set(text)))
    assert vocab.decode(ids) == text
    assert ids.dtype == np.uint8  # narrowest type that holds the vocabulary


def test_encode_corpus_reads_in_slices_without_splitting_characters(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 7)  # force many slice boundaries inside characters
    text = "aé日🎭b" * 40
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    vocab, ids = encode_corpus([path])
    assert vocab.decode(ids) == text


def test_empty_file_is_one_clear_error(tmp_path: Path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(CharRNNError, match="data.path: .*empty.txt is empty"):
        corpus_files(str(path))


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_undecodable_bytes_name_the_byte_offset(tmp_path: Path, monkeypatch, chunk):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good text here " + b"caf\xe9 au lait")
    with pytest.raises(CharRNNError, match=r"not UTF-8 text: byte offset 18 \(0xe9\)"):
        encode_corpus([path])


def test_missing_user_path_is_one_clear_error(tmp_path: Path):
    with pytest.raises(CharRNNError, match="data.path: .*nope.txt does not exist"):
        corpus.locate_corpus(str(tmp_path / "nope.txt"), str(tmp_path), "http://x/y.txt", None)

"""data.path as a file, a folder or a glob; the joined corpus, its split and its memory-mapped ids
cache; each bad input's one line; prompts in any script, typed or read from a file or stdin."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CONF,
    TINY,
    error_line,
    is_mapped,
    make_text,
    run_cli,
    train_config,
    untrained_checkpoint,
)
from hydra import compose, initialize_config_dir

import charrnn.corpus as corpus
import charrnn.files as files
from charrnn.corpus import corpus_files, encode_corpus, ids_cache_path
from charrnn.data import CharDataModule
from charrnn.errors import CharRNNError
from charrnn.run.config import quote_free_text, validate_train
from charrnn.run.generate import read_prompt

TEXTS = [make_text(3000, seed=1), "ÉCOLE: café, coração, αβ 中 😀\n" * 40, make_text(2000, seed=2)]


@pytest.fixture
def books(tmp_path: Path) -> Path:
    """A folder of three files in two levels, plus what a folder walk must leave out."""
    (tmp_path / "books" / "more").mkdir(parents=True)
    for name, text in zip(("a.txt", "b.md", "more/c.txt"), TEXTS, strict=True):
        (tmp_path / "books" / name).write_text(text, encoding="utf-8")
    (tmp_path / "books" / "empty.txt").write_bytes(b"")  # contributes nothing, not even a separator
    (tmp_path / "books" / ".notes.txt").write_text("hidden", encoding="utf-8")
    return tmp_path / "books"


def _datamodule(tmp_path: Path, path, *overrides: str) -> CharDataModule:
    cfg = train_config(tmp_path / "run", *TINY, f"data.path={path}", *overrides)
    module = CharDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    module.setup("fit")
    return module


def test_a_folder_and_a_glob_give_the_same_corpus_with_the_separator_between_files(books):
    found = corpus_files(str(books))
    assert [p.relative_to(books).as_posix() for p in found] == ["a.txt", "b.md", "more/c.txt"]
    assert corpus_files(str(books / "**" / "*.*")) == found
    vocab, ids = encode_corpus(found)
    glob_vocab, glob_ids = encode_corpus(corpus_files(f"{books}/**/*"), cache=False)
    assert vocab == glob_vocab and np.array_equal(ids, glob_ids)
    assert vocab.decode(ids) == "\n\n".join(TEXTS)
    assert vocab.chars == "".join(sorted(set("\n\n".join(TEXTS))))  # over all the files
    vocab, ids = encode_corpus(found, separator="\n<|file|>\n", cache=False)
    assert vocab.decode(ids) == "\n<|file|>\n".join(TEXTS)


def test_validation_is_the_tail_of_the_joined_text(books, tmp_path):
    module = _datamodule(tmp_path, books, "data.val_frac=0.25")
    joined = "\n\n".join(TEXTS)
    n_train = int(len(joined) * 0.75)
    assert module.vocab.decode(module.train_ids) == joined[:n_train]
    assert module.vocab.decode(module.val_ids) == joined[n_train:]
    assert len(module.files) == 3 and module.corpus_path == str(books)


def test_a_changed_file_invalidates_the_cache(books):
    found = corpus_files(str(books))
    encode_corpus(found)
    old = ids_cache_path(found)
    (books / "more" / "c.txt").write_text("a different last file\n", encoding="utf-8")
    vocab, ids = encode_corpus(found)
    assert ids_cache_path(found) != old and not old.exists()
    assert vocab.decode(ids).endswith("\n\na different last file\n")


def test_the_memory_mapped_ids_give_the_same_batches_as_ids_in_memory(books, tmp_path, monkeypatch):
    mapped = {s: _datamodule(tmp_path, books, f"data.stateful={s}") for s in ("true", "false")}
    assert all(is_mapped(m.train_ids) for m in mapped.values())
    assert all(is_mapped(m.val_text) for m in mapped.values())

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    for cache in books.glob(".*.ids.*"):
        cache.unlink()  # the maps stay readable
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    for stateful, module in mapped.items():
        in_memory = _datamodule(tmp_path, books, f"data.stateful={stateful}")
        assert not is_mapped(in_memory.train_ids)
        loaders = [m.train_dataloader() for m in (in_memory, module)]
        for pair in [
            loaders,
            *zip(in_memory.val_dataloader(), module.val_dataloader(), strict=True),
        ]:
            expected, got = (list(loader) for loader in pair)
            assert len(got) == len(expected) > 0
            pairs = zip(got, expected, strict=True)
            assert all(torch.equal(g[0], e[0]) and torch.equal(g[1], e[1]) for g, e in pairs)


def test_a_folder_and_a_glob_of_the_same_files_share_one_cache(books, tmp_path):
    first = _datamodule(tmp_path, books)
    second = _datamodule(tmp_path, str(books / "**" / "*"))
    assert is_mapped(first.train_ids) and is_mapped(second.train_ids)
    assert len(list(books.rglob(".*.ids.npy"))) == 1  # the second read the first's cache


def test_data_encoding_reads_old_archives(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("ROMEO: Café, señor, ½.\n".encode("cp1252") * 200)
    with pytest.raises(CharRNNError, match=r"not UTF-8 text: byte offset 10 \(0xe9\)"):
        encode_corpus([path])
    vocab, ids = encode_corpus([path], encoding="cp1252")
    assert vocab.decode(ids[:23]) == "ROMEO: Café, señor, ½.\n"


def _unreadable(path: Path, monkeypatch) -> None:
    """`path` cannot be opened (tests run as root, which chmod does not stop)."""
    real_open = open

    def fake_open(name, *args, **kwargs):
        if Path(name) == path:
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(corpus, "open", fake_open, raising=False)


BAD = {  # case -> (the files of the input folder, data.path in it, words the one line must contain)
    "empty_folder": ({}, "", ["data.path", "has no text files"]),
    "folder_of_empty_files": ({"e.txt": b""}, "", ["has no text files"]),
    "glob_matching_nothing": ({"a.md": b"text"}, "*.txt", ["data.path", "has no text files"]),
    "binary_file": ({"a.txt": b"text", "z.bin": b"\0\1\2"}, "", ["data.path", "z.bin", "binary"]),
    "bad_encoding": (
        {"a.txt": b"caf\xe9\n"},
        "",
        ["data.path", "a.txt", "not UTF-8", "byte offset 3", "data.encoding"],
    ),
    "unreadable_file": (
        {"a.txt": b"text", "locked.txt": b"x"},
        "",
        ["data.path", "can't read", "locked.txt", "Permission denied"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_is_one_line_naming_it(case, tmp_path, monkeypatch):
    contents, path, needles = BAD[case]
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    _unreadable(folder / "locked.txt", monkeypatch)
    with pytest.raises(CharRNNError) as err:
        _datamodule(tmp_path, folder / path)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    "key,value", [("data.encoding", "klingon"), ("data.encoding", "rot13"), ("data.separator", 3)]
)
def test_bad_encoding_or_separator_names_the_key(tmp_path, key, value):
    cfg = train_config(tmp_path, f"{key}={value}")
    with pytest.raises(CharRNNError, match=f"^{key}: "):
        validate_train(cfg)


# ------------------------------------------------------------------------ prompts in any script

PROMPTS = ["café", "中", "😀", "coração, αβ", "Hi, you [sighs]"]


@pytest.fixture(scope="module")
def any_script(tmp_path_factory) -> Path:
    """A folder with an untrained checkpoint whose vocabulary covers PROMPTS."""
    root = tmp_path_factory.mktemp("any_script")
    torch.save(
        untrained_checkpoint("".join(sorted(set(make_text(2000) + "".join(PROMPTS))))),
        root / "m.ckpt",
    )
    return root


def _generate(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return run_cli("generate.py", "ckpt=m.ckpt", "length=20", *args, cwd=cwd, stdin=stdin)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_prompt_in_any_script_is_read_as_typed(prompt):
    """What each entry point hands Hydra (quote_free_text) composes to the prompt as typed."""
    argv = quote_free_text(["generate.py", f"prompt={prompt}"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose("generate", overrides=argv[1:]).prompt == prompt


def test_the_sampling_callbacks_prompt_is_taken_as_typed_too(tmp_path):
    result = run_cli(
        "train.py", "callbacks.sample_text.prompt=coração", "--cfg", "job", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "prompt: coração" in result.stdout


def test_prompt_file_from_a_file_and_from_stdin_equals_the_typed_prompt(any_script, monkeypatch):
    (any_script / "prompt.txt").write_text("coração, αβ", encoding="utf-8")
    typed = _generate(any_script, "prompt=coração, αβ").stdout
    assert _generate(any_script, "prompt_file=-", stdin="coração, αβ").stdout == typed
    monkeypatch.chdir(any_script)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("generate", overrides=["prompt_file=prompt.txt"])
    assert typed.startswith(read_prompt(cfg)) and read_prompt(cfg) == "coração, αβ"


@pytest.mark.parametrize(
    "source,needle",
    [
        ("nope.txt", "prompt_file: can't read nope.txt (No such file"),
        ("bad.txt", "can't read bad.txt (not UTF-8 text: byte 3)"),
        ("-", "prompt_file: standard input is empty"),
    ],
)
def test_a_bad_prompt_file_is_one_line(any_script, monkeypatch, source, needle):
    (any_script / "bad.txt").write_bytes(b"caf\xe9")
    monkeypatch.chdir(any_script)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("generate", overrides=[f"prompt_file={source}"])
    with pytest.raises(CharRNNError, match=re.escape(needle)) as err:
        read_prompt(cfg)
    assert "\n" not in str(err.value)


def test_prompt_file_and_a_typed_prompt_is_one_line(any_script):
    (any_script / "prompt.txt").write_text("hi", encoding="utf-8")
    line = error_line(_generate(any_script, "prompt_file=prompt.txt", "prompt=hi"))
    assert "prompt_file: give prompt= or prompt_file=" in line, line

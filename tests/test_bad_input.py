"""Every bad input gets one line naming the problem and the fix, and good files stay as they were.

What only the command line shows is checked through src/train.py once: exit code 1, exactly one
`error:` line and no traceback (unless HYDRA_FULL_ERROR=1), Hydra's own message for an unknown key,
and resume= errors (resolved before Hydra starts). Every other bad input is checked in-process on
the real config: its one-line CharRNNError is what the command line prints after `error:`.
Bad values of single keys (model.cell, sizes, fractions, sha256, ...) are in test_config.py, failed
downloads in test_download.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, error_line, make_text, run_cli, train_config, untrained_checkpoint

from charrnn.errors import CharRNNError
from charrnn.run.resume import resume_argv
from charrnn.run.train import train
from charrnn.sampling import check_options, clean_prompt
from charrnn.vocab import Vocab

# ---------------------------------------------------------------------------------- the inputs


class Custom:
    """A class of our own: pickled into a checkpoint, it must be refused, never unpickled."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    text = make_text(6000)
    (d / "corpus.txt").write_text(text, encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    (d / "short.txt").write_text("ROMEO:\nHi.", encoding="utf-8")  # 10 chars < one window of 21
    (d / "short_val.txt").write_text(make_text(600), encoding="utf-8")  # val 6 chars at 1%
    (d / "latin1.txt").write_bytes(b"ROMEO:\nCaf\xe9 au lait.\n" * 40)  # \xe9 at byte offset 10
    vocab = "".join(sorted(set(text)))
    other = "".join(sorted(set(vocab.replace("?", "").replace("K", "") + "QZ")))
    torch.save(untrained_checkpoint(vocab), d / "good.ckpt")
    torch.save(untrained_checkpoint(other), d / "other_vocab.ckpt")
    torch.save({**untrained_checkpoint(vocab), "extra": Custom()}, d / "pickled.ckpt")
    good = (d / "good.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (d / "notes.ckpt").write_text("not a checkpoint\n", encoding="utf-8")
    return d


CASES = {  # case -> (overrides given the `inputs` dir d, words the one-line error must contain)
    "missing_corpus": (
        lambda d: [f"data.path={d / 'nope.txt'}"],
        ["data.path", "does not exist"],
    ),
    "empty_corpus": (lambda d: [f"data.path={d / 'empty.txt'}"], ["is empty"]),
    "corpus_shorter_than_a_window": (
        lambda d: [f"data.path={d / 'short.txt'}"],
        ["10 characters", "fewer than one window", "data.seq_length"],
    ),
    "val_split_shorter_than_a_window": (
        lambda d: [f"data.path={d / 'short_val.txt'}", "data.val_frac=0.01"],
        ["validation split", "data.val_frac"],
    ),
    "undecodable_bytes": (
        lambda d: [f"data.path={d / 'latin1.txt'}"],
        ["not UTF-8", "byte offset 10", "0xe9"],
    ),
    "ckpt_path_missing": (
        lambda d: [f"ckpt_path={d / 'nope.ckpt'}"],
        ["ckpt_path", "does not exist", "resume=last"],
    ),
    "ckpt_path_directory": (lambda d: [f"ckpt_path={d}"], ["is a directory"]),
    "ckpt_path_not_a_checkpoint": (
        lambda d: [f"ckpt_path={d / 'notes.ckpt'}"],
        ["not a PyTorch checkpoint"],
    ),
    "ckpt_truncated": (lambda d: [f"ckpt_path={d / 'truncated.ckpt'}"], ["truncated or damaged"]),
    "ckpt_with_pickled_object": (  # refused by the weights-only load, never unpickled
        lambda d: [f"ckpt_path={d / 'pickled.ckpt'}"],
        ["pickled Python object", "Custom", "refusing"],
    ),
    "ckpt_other_vocabulary": (
        lambda d: [f"ckpt_path={d / 'other_vocab.ckpt'}"],
        ["another alphabet", "only in the corpus: '?', 'K'", "only in the checkpoint: 'Q', 'Z'"],
    ),
    "ckpt_other_model": (
        lambda d: [f"ckpt_path={d / 'good.ckpt'}", "model.rnn_units=64"],
        ["model.rnn_units", "64", "32"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_it(case, inputs, tmp_path):
    overrides, needles = CASES[case]
    corpus = [f"data.path={inputs / 'corpus.txt'}"]  # a case's own data.path comes later, wins
    cfg = train_config(tmp_path, *TINY, *corpus, *overrides(inputs))
    checkpoints = {p: p.read_bytes() for p in inputs.glob("*.ckpt")}
    with pytest.raises(CharRNNError) as err:
        train(cfg, tmp_path)
    message = str(err.value)
    assert "\n" not in message, message  # printed as one `error:` line
    for needle in needles:
        assert needle in message, message
    assert not list(tmp_path.glob("checkpoints/*"))  # nothing was saved
    assert {p: p.read_bytes() for p in inputs.glob("*.ckpt")} == checkpoints  # refused: only read


# ---------------------------------------------------------------- what only the command line shows


def test_a_bad_value_is_one_error_line_exit_1_and_no_traceback(tmp_path):
    line = error_line(run_cli("train.py", "model.cell=rnn", cwd=tmp_path))
    assert line.endswith("error: model.cell: 'rnn' is not allowed; choose one of gru, lstm")
    assert not (tmp_path / "data").exists()  # refused before anything was downloaded


def test_hydra_full_error_shows_the_traceback(tmp_path):
    # a bad value fails before Lightning is imported: seconds
    result = run_cli("train.py", "data.val_frac=2", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CharRNNError: data.val_frac: 2" in result.stderr


def test_unknown_config_key_is_hydras_message_without_traceback(tmp_path):
    result = run_cli("train.py", "trainer.max_epoch=3", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Could not override 'trainer.max_epoch'" in out
    assert "Traceback" not in out


def test_resume_without_runs_is_one_line_before_hydra_starts(tmp_path):
    line = error_line(run_cli("train.py", "resume=last", cwd=tmp_path))
    assert "resume=last" in line and "no checkpoints under" in line
    assert not (tmp_path / "outputs").exists()  # Hydra never started: no run dir


def test_resume_of_an_unknown_run_names_it(tmp_path):
    with pytest.raises(CharRNNError, match="no such run dir") as err:
        resume_argv(["train.py", f"resume={tmp_path / 'no-such-run'}"], outputs=tmp_path)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------- generator options


def test_prompt_outside_vocabulary_and_negative_temperature():
    vocab = Vocab("\n !,.:?ACDEFGHIJKLMNORSTUWacdefghiklmnoprstuvwy")
    with pytest.raises(CharRNNError, match=r"never saw: 'Q', 'é'"):
        clean_prompt("QUEEN é:", vocab)
    with pytest.raises(CharRNNError, match="temperature: -0.5 is not allowed; use a number >= 0"):
        check_options(vocab, 10, -0.5, 0)

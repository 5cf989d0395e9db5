"""Every bad input gets one line naming the problem and the fix, through the real CLI.

Exit code 1, no traceback (unless HYDRA_FULL_ERROR=1), nothing written over good files. The CLI
runs are independent, so they start together (a few at a time) and each test checks its own.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning
import pytest
import torch
from conftest import ROOT, TINY, make_text

from charrnn.corpus import download, locate_corpus
from charrnn.errors import CharRNNError
from charrnn.model import CharLM
from charrnn.sampling import check_options, clean_prompt
from charrnn.vocab import Vocab

BODY = make_text(3000, seed=3).encode()  # what the test server serves as the "right" file
TINY_MODEL = {
    "cell": "gru",
    "embedding_dim": 16,
    "rnn_units": 32,
    "num_layers": 1,
    "dropout": 0.0,
    "emb_dropout": 0.0,
    "out_dropout": 0.0,
}


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """src/train.py in a subprocess, without HYDRA_FULL_ERROR unless `env` sets it."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exit 1, without a traceback, and said why in one `error:` line."""
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "error: " in line]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------ a local web server


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output quiet
        pass

    def _send(self, body: bytes, length: int | None = None):
        self.send_response(200)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name == "corpus.txt":
            self._send(BODY)
        elif name == "wrong.txt":
            self._send(BODY.replace(b"the", b"THE"))
        elif name == "slow.txt":
            time.sleep(4)
            self._send(BODY)
        elif name == "truncated.txt":
            self._send(BODY[:500], length=len(BODY))  # promises more than it sends, then closes
        else:
            self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------------------------- the inputs


class Custom:
    """A class of our own: pickled into a checkpoint, it must be refused, never unpickled."""


def _checkpoint(vocab: str) -> dict:
    """A charrnn checkpoint's contents (weights, hparams, training state) for a tiny GRU."""
    module = CharLM(
        vocab=vocab,
        model=TINY_MODEL,
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    )
    return {
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 5,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "optimizer_states": [],
        "loops": {},
    }


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
    torch.save(_checkpoint(vocab), d / "good.ckpt")
    torch.save(_checkpoint(other), d / "other_vocab.ckpt")
    torch.save({**_checkpoint(vocab), "extra": Custom()}, d / "pickled.ckpt")
    good = (d / "good.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (d / "notes.ckpt").write_text("not a checkpoint\n", encoding="utf-8")
    return d


def _cases(d: Path, url: str) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (arguments, words the one error line must contain)."""
    corpus = f"data.path={d / 'corpus.txt'}"
    fetch = ("data.path=null", f"data.cache_dir={d / 'cache'}")
    return {
        "missing_corpus": ([f"data.path={d / 'nope.txt'}"], ["data.path", "does not exist"]),
        "empty_corpus": ([f"data.path={d / 'empty.txt'}"], ["is empty"]),
        "corpus_shorter_than_a_window": (
            [f"data.path={d / 'short.txt'}"],
            ["10 characters", "fewer than one window", "data.seq_length"],
        ),
        "val_split_shorter_than_a_window": (
            [f"data.path={d / 'short_val.txt'}", "data.val_frac=0.01"],
            ["validation split", "data.val_frac"],
        ),
        "undecodable_bytes": (
            [f"data.path={d / 'latin1.txt'}"],
            ["not UTF-8", "byte offset 10", "0xe9"],
        ),
        "download_http_error": ([*fetch, f"data.url={url}/gone.txt"], ["HTTP 404", "data.path"]),
        "download_timeout": (
            [*fetch, f"data.url={url}/slow.txt", "data.download_timeout=1"],
            ["no answer within data.download_timeout=1"],
        ),
        "download_checksum_mismatch": (
            [*fetch, f"data.url={url}/wrong.txt"],
            ["sha256", "nothing was cached", "data.sha256"],
        ),
        "download_truncated": (
            [*fetch, f"data.url={url}/truncated.txt"],
            ["stopped after 500 of 3000 bytes"],
        ),
        "bad_sha256": ([corpus, "data.sha256=abc"], ["data.sha256", "64-hex-digit"]),
        "bad_cell_type": ([corpus, "model.cell=rnn"], ["model.cell", "'rnn'", "gru, lstm"]),
        "non_positive_size": ([corpus, "model.rnn_units=0"], ["model.rnn_units", "> 0"]),
        "val_frac_out_of_range": (
            [corpus, "data.val_frac=1.5"],
            ["data.val_frac", "between 0 and 1"],
        ),
        "dropout_out_of_range": ([corpus, "model.dropout=1.0"], ["model.dropout", "[0, 1)"]),
        "ckpt_path_missing": (
            [corpus, f"ckpt_path={d / 'nope.ckpt'}"],
            ["ckpt_path", "does not exist", "resume=last"],
        ),
        "ckpt_path_directory": ([corpus, f"ckpt_path={d}"], ["is a directory"]),
        "ckpt_path_not_a_checkpoint": (
            [corpus, f"ckpt_path={d / 'notes.ckpt'}"],
            ["not a PyTorch checkpoint"],
        ),
        "ckpt_truncated": ([corpus, f"ckpt_path={d / 'truncated.ckpt'}"], ["truncated or damaged"]),
        "ckpt_with_pickled_object": (
            [corpus, f"ckpt_path={d / 'pickled.ckpt'}"],
            ["pickled Python object", "Custom", "refusing"],
        ),
        "ckpt_other_vocabulary": (
            [corpus, f"ckpt_path={d / 'other_vocab.ckpt'}"],
            [
                "another alphabet",
                "only in the corpus: '?', 'K'",
                "only in the checkpoint: 'Q', 'Z'",
            ],
        ),
        "ckpt_other_model": (
            [corpus, f"ckpt_path={d / 'good.ckpt'}", "model.rnn_units=64"],
            ["model.rnn_units", "64", "32"],
        ),
        "resume_without_runs": (["resume=last"], ["resume=last", "no checkpoints under"]),
        "resume_unknown_run": ([f"resume={d / 'no-such-run'}"], ["no such run dir"]),
    }


@pytest.fixture(scope="module")
def results(inputs, server, tmp_path_factory) -> dict:
    """Runs every case's CLI once, four at a time."""
    cases = _cases(inputs, server)
    cwd = tmp_path_factory.mktemp("cwd")

    def run(item):
        name, (args, _) = item
        (cwd / name).mkdir()
        return name, cli(*TINY, *args, cwd=cwd / name)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, cases.items()))


@pytest.mark.parametrize("case", list(_cases(Path("/x"), "http://x")))
def test_bad_input_gives_one_line(case, results, inputs, server):
    _, needles = _cases(inputs, server)[case]
    line = error_line(results[case])
    for needle in needles:
        assert needle in line, line


def test_failed_downloads_cache_nothing(results, inputs):
    for case in (
        "download_http_error",
        "download_timeout",
        "download_checksum_mismatch",
        "download_truncated",
    ):
        assert results[case].returncode == 1
    cache = inputs / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_bad_checkpoints_are_left_as_they_were(results, inputs):
    """A refused checkpoint is only read: its bytes are what the test wrote."""
    assert results["ckpt_other_vocabulary"].returncode == 1
    good = inputs / "good.ckpt"
    assert (inputs / "truncated.ckpt").read_bytes() == good.read_bytes()[: good.stat().st_size // 2]
    assert (inputs / "notes.ckpt").read_text() == "not a checkpoint\n"


def test_unknown_config_key_is_hydras_message_without_traceback(tmp_path, inputs):
    result = cli(f"data.path={inputs / 'corpus.txt'}", "trainer.max_epoch=3", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Could not override 'trainer.max_epoch'" in out
    assert "Traceback" not in out


def test_hydra_full_error_shows_the_traceback(tmp_path, inputs):
    result = cli(
        f"data.path={inputs / 'corpus.txt'}",
        "model.cell=rnn",
        cwd=tmp_path,
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CharRNNError: model.cell" in result.stderr


# ------------------------------------------------------------- download, in process (all outcomes)


def test_download_success_verifies_and_caches(server, tmp_path):
    sha = hashlib.sha256(BODY).hexdigest()
    path = locate_corpus(None, str(tmp_path), f"{server}/corpus.txt", sha, timeout=5)
    assert path == tmp_path / "corpus.txt" and path.read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # no temp file left


@pytest.mark.parametrize(
    "name, needle",
    [
        ("gone.txt", "HTTP 404"),
        ("slow.txt", "no answer within"),
        ("wrong.txt", "nothing was cached"),
        ("truncated.txt", "after 500 of 3000 bytes"),
    ],
)
def test_download_failures_leave_nothing(server, tmp_path, name, needle):
    sha = hashlib.sha256(BODY).hexdigest()
    with pytest.raises(CharRNNError, match=needle):
        download(f"{server}/{name}", tmp_path / "corpus.txt", sha, timeout=1)
    assert list(tmp_path.iterdir()) == []


def test_unverified_url_needs_explicit_null_and_warns(server, tmp_path, caplog):
    url = f"{server}/corpus.txt"
    with caplog.at_level("WARNING"):
        path = locate_corpus(None, str(tmp_path), url, None, timeout=5)
    assert "without verifying" in caplog.text
    assert path.read_bytes() == BODY and path.name.endswith("-corpus.txt")  # keyed by URL
    # a verified download of the same name never takes the unverified file for its own
    assert not (tmp_path / "corpus.txt").exists()


# -------------------------------------------------------------------------- generator options


def test_prompt_outside_vocabulary_and_negative_temperature():
    vocab = Vocab("\n !,.:?ACDEFGHIJKLMNORSTUWacdefghiklmnoprstuvwy")
    with pytest.raises(CharRNNError, match=r"never saw: 'Q', 'é'"):
        clean_prompt("QUEEN é:", vocab)
    with pytest.raises(CharRNNError, match="temperature: -0.5 is not allowed; use a number >= 0"):
        check_options(vocab, 10, -0.5, 0)

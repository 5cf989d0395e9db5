"""Shared fixtures: small generated corpora and the real Hydra config, shrunk for speed."""

from __future__ import annotations

import collections
import http.server
import mmap
import os
import random
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import charrnn.run  # noqa: F401  (registers the config's resolvers)
from charrnn.run.config import machine_cores

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# pytest-xdist runs one test per core at once (make test: -n auto): each gets its share of the
# cores, in-process and in the commands it starts, so they do not fight over the same ones
THREADS = max(1, machine_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)

_NAMES = ["ROMEO", "JULIET", "NURSE", "FRIAR"]
_WORDS = (
    "the a my thy good sweet night day love hate fair light dark moon sun star heart hand eye "
    "come go stay speak hear see know will shall must now here there when what why how thou thee"
).split()


def is_mapped(array) -> bool:
    """Whether `array` reads a memory-mapped file (read-only), not a copy in RAM."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(getattr(base, "obj", base), mmap.mmap) and not array.flags.writeable


def make_text(chars: int, seed: int = 0) -> str:
    """Play-like text of our own making: speaker lines and sentences from a small word list."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
        block = f"{rng.choice(_NAMES)}:\n{line.capitalize()}{rng.choice('.,!?')}\n\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)[:chars]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A 40,000-character corpus file."""
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(40_000), encoding="utf-8")
    return path


def train_config(run_dir: Path, *overrides: str) -> DictConfig:
    """The real train config composed from conf/ with `overrides`, as @hydra.main would hand it to
    a run whose output dir is `run_dir`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True
        )
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a run sees its config without the hydra node, as under @hydra.main
    return cfg


def untrained_checkpoint(vocab: str) -> dict:
    """A charrnn checkpoint's contents (weights, hparams, training state) for a tiny GRU."""
    import lightning

    from charrnn.model import CharLM

    model = {"cell": "gru", "embedding_dim": 16, "rnn_units": 32, "num_layers": 1}
    module = CharLM(
        vocab=vocab,
        model={**model, "dropout": 0.0, "emb_dropout": 0.0, "out_dropout": 0.0},
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


TINY = ("size=tiny", "data.seq_length=20", "data.batch_size=16", "data.val_streams=4")


def _command(script: str, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(ROOT / "src" / script), *args]


def _environ(env: dict | None) -> dict:
    """The test's environment without HYDRA_FULL_ERROR (a developer's shell may set it), with
    DeprecationWarnings as errors (no command may print one: a deprecated API fails every CLI
    test that reaches it), plus `env`."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    forced = {"PYTHONWARNINGS": "error::DeprecationWarning", "OMP_NUM_THREADS": str(THREADS)}
    return {**environ, **forced, **(env or {})}


def run_cli(
    script: str,
    *args: str,
    cwd: Path,
    timeout: float = 300,
    env: dict | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """Runs one of the real entry points (src/<script>) to its end in a subprocess, `stdin` as its
    standard input; it printed nothing about deprecation."""
    result = subprocess.run(
        _command(script, args),
        cwd=cwd,
        env=_environ(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "deprecat" not in (result.stdout + result.stderr).lower(), result.stderr[-3000:]
    return result


def start_cli(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts src/<script> like run_cli, without waiting: stdout and stderr in one pipe, read
    with finish() (for tests that signal the running command)."""
    return subprocess.Popen(
        _command(script, args),
        cwd=cwd,
        env=_environ(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Waits for a start_cli command to end; its whole output (nothing about deprecation)."""
    out, _ = proc.communicate(timeout=timeout)
    assert "deprecat" not in out.lower(), out[-3000:]
    return out


def error_line(result: subprocess.CompletedProcess | tuple[int, str]) -> str:
    """The command failed with exit code 1, without a traceback, and said why in exactly one
    `error:` line, which is returned. `result`: run_cli's, or (returncode, output) of start_cli."""
    if isinstance(result, subprocess.CompletedProcess):
        code, out = result.returncode, result.stdout + result.stderr
    else:
        code, out = result
    assert code == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "error: " in line]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


# ------------------------------------------------------------------ one local HTTP test server

SERVED = make_text(3000, seed=3).encode()  # the "right" file the test server serves


class _Handler(http.server.BaseHTTPRequestHandler):
    """/<dir>/corpus.txt: SERVED; wrong.txt: a tampered copy; slow.txt: no answer until the
    server stops; truncated.txt: 500 of the 3000 bytes its Content-Length promises; else 404."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _send(self, body: bytes, length: int | None = None):
        self.send_response(200)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.hits[self.path] += 1
        name = self.path.rsplit("/", 1)[-1]
        if name == "corpus.txt":
            self._send(SERVED)
        elif name == "wrong.txt":
            self._send(SERVED.replace(b"the", b"THE"))
        elif name == "slow.txt":
            self.server.stopping.wait(60)  # the client gives up first (its timeout)
        elif name == "truncated.txt":
            self._send(SERVED[:500], length=len(SERVED))  # promises more than it sends, closes
        else:
            self.send_error(404, "Not Found")


@dataclass
class Server:
    url: str  # http://127.0.0.1:<port>
    hits: collections.Counter  # path -> how many requests it got


@pytest.fixture(scope="session")
def _httpd():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.hits = collections.Counter()
    httpd.stopping = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.stopping.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(_httpd) -> Server:
    """The session's local web server (see _Handler), its request counts reset for this test."""
    _httpd.hits.clear()
    return Server(f"http://127.0.0.1:{_httpd.server_address[1]}", _httpd.hits)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A working directory with one finished 1-epoch tiny run under outputs/runs/ (last + best)."""
    from charrnn.run.train import train

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(40_000), encoding="utf-8")
    run_dir = root / "outputs" / "runs" / "2000-01-01_00-00-00-000000"
    cfg = train_config(
        run_dir,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_epochs=1",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
    )
    train(cfg, run_dir)
    return root


def spy_on_recurrence(monkeypatch, recurrence) -> list:
    """The dtypes of gi that a fused layer's autograd Function sees, one per layer and call."""
    seen, forward = [], recurrence.forward

    def spy(ctx, gi, *args):
        seen.append(gi.dtype)
        return forward(ctx, gi, *args)

    monkeypatch.setattr(recurrence, "forward", staticmethod(spy))
    return seen

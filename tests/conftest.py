"""Shared fixtures: small generated corpora and the real Hydra config, shrunk for speed."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import charrnn.run  # noqa: F401  (registers the config's resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

_NAMES = ["ROMEO", "JULIET", "NURSE", "FRIAR"]
_WORDS = (
    "the a my thy good sweet night day love hate fair light dark moon sun star heart hand eye "
    "come go stay speak hear see know will shall must now here there when what why how thou thee"
).split()


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


TINY = ("size=tiny", "data.seq_length=20", "data.batch_size=16", "data.val_streams=4")


def run_cli(
    script: str, *args: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Runs one of the real entry points (src/<script>) in a subprocess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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

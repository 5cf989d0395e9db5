"""Export: one TorchScript file holding the step generator and its vocabulary, loadable with only
torch (`torch.jit.load`), generating exactly what generate.py generates for the same options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from charrnn.errors import CharRNNError
from charrnn.files import write_atomically
from charrnn.run.checkpoints import load, resolve
from charrnn.sampling import Sampler, seed_generator
from charrnn.vocab import Vocab

SUFFIX = ".pt"


def save_generator(sampler: Sampler, out: Path, info: dict | None = None) -> Path:
    """Saves the sampler's scripted generator to `out`: written to a temp file, reloaded and
    checked to generate what the sampler generates, and only then renamed onto `out`."""
    extra = {"charrnn.json": json.dumps({"vocab": sampler.vocab.chars, **(info or {})})}
    prompt = sampler.vocab.chars[0]

    def write(tmp: str) -> None:
        torch.jit.save(sampler.core, tmp, _extra_files=extra)
        expected = sampler.generate(prompt, 64, 1.0, 0, 2, seed_generator(0))
        if torch.jit.load(tmp, map_location="cpu")(prompt, 64, 1.0, 0, 2, 0) != expected:
            raise CharRNNError(f"out: the file written for {out} does not reproduce the sampler")

    return write_atomically(out, write)


def _check_out(value) -> Path:
    if not isinstance(value, str) or not value.endswith(SUFFIX):
        raise CharRNNError(
            f"out: {value!r} is not allowed; give a file name ending in {SUFFIX} "
            "(a TorchScript archive, loaded with torch.jit.load)"
        )
    return Path(value).expanduser()


def export(cfg: DictConfig) -> Path:
    """Runs the command: checkpoint → scripted generator file, verified before it lands."""
    out = _check_out(cfg.out)
    path = resolve(cfg.ckpt, cfg.runs_dir)
    trained = load(path)
    vocab: Vocab = trained.vocab
    sampler = Sampler(trained.net, vocab)
    info = {"model": trained.hparams["model"], "checkpoint": str(path)}
    save_generator(sampler, out, info)
    size = out.stat().st_size
    print(f"{path} -> {out} ({size:,} bytes); load it with torch.jit.load", file=sys.stderr)
    return out

"""Checkpoint files: safe reads (weights_only=True; every way a file can be wrong is one line),
`last`/`best` of the newest run, the network rebuilt from one. Needs torch, not Lightning."""

import pickle
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

from charrnn.errors import CharRNNError
from charrnn.net import CharRNN
from charrnn.vocab import Vocab

LAST = "last.ckpt"
ALIASES = ("last", "best")
_VAL_LOSS = re.compile(r"val_loss(\d+(?:\.\d+)?)")


def read_checkpoint(path, key: str = "ckpt_path", mmap: bool = False, ours: bool = True) -> dict:
    """The checkpoint at `path` on the CPU, or one clear error. `mmap` maps the tensors (a cheap
    look); `ours=False` accepts any safe checkpoint (Lightning's own, e.g. DDP spawn's)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CharRNNError(
            f"{key}: {path} is a directory; pass a .ckpt file inside it "
            f"(e.g. {path}/checkpoints/last.ckpt) or continue that run with resume={path}"
        )
    if not path.exists():
        raise CharRNNError(
            f"{key}: {path} does not exist; pass a .ckpt file such as "
            "outputs/runs/<run>/checkpoints/last.ckpt, or continue the newest run with resume=last"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "an empty file" if not head else "not a PyTorch checkpoint"
        raise CharRNNError(f"{key}: {path} is {what}; pass a .ckpt file written by src/train.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a pickled Python object ({found.group(1)})" if found else "pickled Python objects"
        raise CharRNNError(
            f"{key}: {path} contains {what}; refusing to unpickle it, since loading it could run "
            "code (charrnn checkpoints hold only tensors and plain values): use a checkpoint "
            "written by src/train.py"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:  # e.g. a cut-off zip
        reason = str(err).partition("\n")[0] or type(err).__name__
        raise CharRNNError(
            f"{key}: {path} is truncated or damaged ({reason}); use an intact checkpoint, "
            "e.g. another .ckpt in the same directory"
        ) from None
    match checkpoint:
        case {"hyper_parameters": {"vocab": str(), "model": dict()}, "state_dict": dict()}:
            pass  # a charrnn checkpoint
        case _ if ours:
            raise CharRNNError(
                f"{key}: {path} is not a charrnn checkpoint (it lacks hyper_parameters.vocab/model "
                "and a state_dict); pass a .ckpt file written by src/train.py"
            )
    return checkpoint


def newest_run_checkpoint(alias: str, outputs: Path, key: str) -> Path:
    """`last` or `best` of the run (runs/<time>/ or multirun/<time>/<job>/) whose checkpoints were
    written last, or a one-line error saying what is not there."""
    ckpts = [p for d in ("runs/*", "multirun/*/*") for p in outputs.glob(f"{d}/checkpoints/*.ckpt")]
    if not ckpts:
        raise CharRNNError(
            f"{key}={alias}: no checkpoints under {outputs.absolute()}/runs or /multirun; train "
            "first (python src/train.py) or pass a path to a .ckpt file"
        )
    newest = max(ckpts, key=lambda p: p.stat().st_mtime).parent
    found = newest / LAST if alias == "last" else _best_in(newest)
    if found is None or not found.is_file():
        raise CharRNNError(
            f"{key}={alias}: the newest run's folder {newest} has no {alias} checkpoint; "
            "pass a path to a .ckpt file"
        )
    return found


def _best_in(folder: Path) -> Path | None:
    """The run's best checkpoint: the non-last .ckpt (lowest val_loss in its name if several)."""
    candidates = [p for p in folder.glob("*.ckpt") if not p.stem.startswith("last")]

    def key(path: Path):
        found = _VAL_LOSS.search(path.stem)
        return (float(found.group(1)) if found else float("inf"), -path.stat().st_mtime)

    return min(candidates, key=key) if candidates else None


def resolve(value, runs_dir: str | Path = "outputs", key: str = "ckpt") -> Path:
    """The checkpoint `key=value` means: `last`/`best` of the newest run under runs_dir, a run
    dir's last.ckpt, or a file (read_checkpoint names what is wrong with it)."""
    if value is None or str(value).strip() == "":
        raise CharRNNError(f"{key} is not set; pass {key}=path/to/file.ckpt, {key}=last or =best")
    if str(value) in ALIASES:
        return newest_run_checkpoint(str(value), Path(runs_dir).expanduser(), key)
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        return path
    found = [p for p in (path / "checkpoints" / LAST, path / LAST) if p.is_file()]
    if not found:
        raise CharRNNError(
            f"{key}={value}: {path} has no checkpoints/{LAST}; pass a run dir such as "
            f"outputs/runs/<time>, a .ckpt file, or {key}=last"
        )
    return found[0]


@dataclass
class Trained:
    net: CharRNN
    vocab: Vocab
    hparams: dict


def load(path: str | Path) -> Trained:
    """The CharRNN and Vocab of a charrnn checkpoint, on the CPU in eval mode."""
    ckpt = read_checkpoint(path, key="ckpt")
    hparams = ckpt["hyper_parameters"]
    weights = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        vocab = Vocab(hparams["vocab"])
        net = CharRNN(vocab.size, **hparams["model"])
        net.load_state_dict(weights)
    except (CharRNNError, TypeError, KeyError, RuntimeError) as err:
        reason = textwrap.shorten(str(err), 240, placeholder="...")  # torch's spans many lines
        raise CharRNNError(
            f"ckpt: {path} does not hold a model this charrnn can rebuild ({reason})"
        ) from None
    return Trained(net.eval(), vocab, hparams)

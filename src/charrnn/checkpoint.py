"""Trained models from checkpoints: find `last`/`best`, load safely on the CPU, rebuild the network.

Reading a checkpoint needs no Lightning: it is a plain dict (weights_only=True refuses anything
else), and hyper_parameters hold the vocabulary string and the CharRNN's arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import CharRNNError
from charrnn.net import CharRNN
from charrnn.resume import read_checkpoint
from charrnn.vocab import Vocab

ALIASES = ("last", "best")
_VAL_LOSS = re.compile(r"val_loss(\d+(?:\.\d+)?)")


@dataclass
class Trained:
    """A checkpoint turned back into its network (eval mode, CPU) and vocabulary."""

    net: CharRNN
    vocab: Vocab
    hparams: dict
    path: Path


def run_checkpoint_dirs(runs_dir: Path) -> list[Path]:
    """Checkpoint folders of single runs (runs/<time>/) and sweep jobs (multirun/<time>/<job>/)."""
    folders = [*runs_dir.glob("runs/*/checkpoints"), *runs_dir.glob("multirun/*/*/checkpoints")]
    return [d for d in folders if d.is_dir() and any(d.glob("*.ckpt"))]


def _best_in(folder: Path) -> Path | None:
    """The run's best checkpoint: the non-last .ckpt (lowest val_loss in its name if several)."""
    candidates = [p for p in folder.glob("*.ckpt") if not p.stem.startswith("last")]

    def key(path: Path):
        found = _VAL_LOSS.search(path.stem)
        return (float(found.group(1)) if found else float("inf"), -path.stat().st_mtime)

    return min(candidates, key=key) if candidates else None


def resolve(ckpt: str, runs_dir: str | Path = "outputs") -> Path:
    """A checkpoint path from `ckpt`: a path, or `last`/`best` of the newest run under runs_dir.

    The newest run is the one whose checkpoints were written most recently (a resumed run counts
    as new again).
    """
    if ckpt is None or str(ckpt).strip() == "":
        raise CharRNNError("ckpt is not set; pass ckpt=path/to/file.ckpt, ckpt=last or ckpt=best")
    ckpt = str(ckpt)
    if ckpt not in ALIASES:
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise CharRNNError(
                f"ckpt: {path} does not exist; pass a .ckpt file, or last/best for the newest run's"
            )
        return path
    runs = Path(runs_dir).expanduser()
    folders = run_checkpoint_dirs(runs)
    if not folders:
        raise CharRNNError(
            f"ckpt={ckpt}: no checkpoints under {runs}/runs or {runs}/multirun; train first "
            "(python src/train.py) or pass ckpt=path/to/file.ckpt"
        )
    newest = max(folders, key=lambda d: max(p.stat().st_mtime for p in d.glob("*.ckpt")))
    found = newest / "last.ckpt" if ckpt == "last" else _best_in(newest)
    if found is None or not found.is_file():
        raise CharRNNError(
            f"ckpt={ckpt}: the newest run's folder {newest} has no {ckpt} checkpoint; "
            "pass ckpt=path/to/file.ckpt"
        )
    return found


def load(path: str | Path) -> Trained:
    """The CharRNN and Vocab of a charrnn checkpoint, on the CPU in eval mode."""
    path = Path(path)
    ckpt = read_checkpoint(path, key="ckpt")
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if (
        not isinstance(hparams, dict)
        or not isinstance(hparams.get("vocab"), str)
        or not isinstance(hparams.get("model"), dict)
        or not isinstance(state, dict)
    ):
        raise CharRNNError(
            f"ckpt: {path} is not a charrnn checkpoint (it lacks hyper_parameters.vocab/model and "
            "a state_dict); pass a checkpoint written by src/train.py"
        )
    weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    try:
        vocab = Vocab(hparams["vocab"])
        net = CharRNN(vocab.size, **hparams["model"])
        net.load_state_dict(weights)
    except (CharRNNError, TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split())  # torch's state_dict report spans several lines
        reason = reason if len(reason) <= 240 else reason[:240] + "..."
        raise CharRNNError(
            f"ckpt: {path} does not hold a model this charrnn can rebuild ({reason})"
        ) from None
    return Trained(net.eval(), vocab, hparams, path)

"""Checkpoint files and resuming: safe reads, and finding the run to continue.

A checkpoint is read with `weights_only=True` only; every way a file can be wrong (missing, a
directory, not a checkpoint, truncated, holding pickled objects, another alphabet or model) becomes
one CharRNNError line. `resume=last | <run dir> | <last.ckpt>` continues a run in its own directory
with its own overrides, which every checkpoint records (charrnn.safety.ResumeState). Needs torch
but not Lightning, so a bad checkpoint is refused before Lightning is even imported.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from datetime import datetime
from pathlib import Path

import torch
import yaml

from charrnn.errors import CharRNNError

log = logging.getLogger(__name__)

LAST = "last.ckpt"
OUTPUTS = Path("outputs")  # where hydra.run.dir / hydra.sweep.dir put runs (relative to the cwd)
NOT_REPLAYED = ("resume", "ckpt_path")  # overrides that name a checkpoint, not the run's config
SHAPE = ("cell", "embedding_dim", "rnn_units", "num_layers")  # model keys the weights depend on
RECORD = "ResumeState"  # the checkpoint["callbacks"] key of charrnn.safety.ResumeState's record


# ----------------------------------------------------------------------------------- reading


def read_checkpoint(path, key: str = "ckpt_path", mmap: bool = False, ours: bool = True) -> dict:
    """The checkpoint at `path`, loaded with weights_only=True onto the CPU, or one clear error.

    `mmap=True` maps the tensors instead of reading them: a cheap look at the contents.
    `ours=False` accepts any safe checkpoint (Lightning's own temporary ones, e.g. DDP spawn's).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CharRNNError(
            f"{key}: {path} does not exist; pass a .ckpt file such as "
            "outputs/runs/<run>/checkpoints/last.ckpt, or continue the newest run with resume=last"
        )
    if path.is_dir():
        raise CharRNNError(
            f"{key}: {path} is a directory; pass a .ckpt file inside it "
            f"(e.g. {path}/checkpoints/last.ckpt) or continue that run with resume={path}"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "an empty file" if not head else "not a PyTorch checkpoint"
        raise CharRNNError(f"{key}: {path} is {what}; pass a .ckpt file written by src/train.py")
    if not zipfile.is_zipfile(path):
        raise CharRNNError(
            f"{key}: {path} is truncated or damaged (its archive is incomplete); "
            "use an intact checkpoint, e.g. another .ckpt in the same directory"
        )
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
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CharRNNError(
            f"{key}: {path} is truncated or damaged ({reason}); use an intact checkpoint, "
            "e.g. another .ckpt in the same directory"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if ours and (
        not isinstance(hparams, dict) or "state_dict" not in checkpoint or "vocab" not in hparams
    ):
        raise CharRNNError(
            f"{key}: {path} is not a charrnn checkpoint (no weights and vocabulary); "
            "pass a .ckpt file written by src/train.py"
        )
    return checkpoint


# ------------------------------------------------------------------------ is this checkpoint ours


def _chars(chars: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def check_resumable(checkpoint: dict, path, vocab: str, model: dict, corpus) -> None:
    """Refuses, in one line, a checkpoint this run cannot continue: another alphabet, another
    network shape, or no training state."""
    hparams = checkpoint["hyper_parameters"]
    saved = hparams["vocab"]
    if saved != vocab:
        only_corpus = sorted(set(vocab) - set(saved))
        only_ckpt = sorted(set(saved) - set(vocab))
        differences = []
        if only_corpus:
            differences.append(f"only in the corpus: {_chars(only_corpus)}")
        if only_ckpt:
            differences.append(f"only in the checkpoint: {_chars(only_ckpt)}")
        raise CharRNNError(
            f"{path} was trained on another alphabet than {corpus} ({'; '.join(differences)}); "
            "continuing needs the same characters: train on text with exactly these characters, "
            "or start a new run without ckpt_path/resume"
        )
    saved_model = hparams.get("model") or {}
    for key in SHAPE:  # dropout may change on resume; the shape of the weights may not
        old, new = saved_model.get(key), model.get(key)
        if key in saved_model and new != old:
            raise CharRNNError(
                f"model.{key}: this run asks for {new!r} but {path} was trained with {old!r}; "
                f"drop that override (or pass model.{key}={old}) to continue from this checkpoint"
            )
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CharRNNError(
            f"{path} holds weights only (no optimiser state or progress), so training cannot "
            "resume from it; pass a last.ckpt or epoch checkpoint written by src/train.py"
        )


# ------------------------------------------------------------------ resume=... on the command line


def override_key(override: str) -> str | None:
    """The config key an override sets (`+a.b=1` -> `a.b`), or None for flags like `-m`."""
    if override.startswith("-") or ("=" not in override and not override.startswith("~")):
        return None
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(value) -> str:
    """A path as a Hydra override value, quoted if it has characters the grammar treats apart."""
    text = str(value)
    if re.fullmatch(r"[\w/.\-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def newest_last_checkpoint(outputs: Path = OUTPUTS) -> Path:
    """The most recently written last.ckpt of any run or sweep job under `outputs`."""
    found = [
        *outputs.glob(f"runs/*/checkpoints/{LAST}"),
        *outputs.glob(f"multirun/*/*/checkpoints/{LAST}"),
    ]
    if not found:
        raise CharRNNError(
            f"resume=last: no run under {outputs.absolute()} has checkpoints/{LAST}; train first, "
            "or pass resume=<run dir> or ckpt_path=<file.ckpt>"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def locate_resume(value: str, outputs: Path = OUTPUTS) -> Path:
    """The last.ckpt that `resume=<value>` means: last (the newest run), a run dir, or a .ckpt."""
    if value in ("last", "latest"):
        return newest_last_checkpoint(outputs)
    path = Path(value).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise CharRNNError(
            f"resume={value}: {path} has no checkpoints/{LAST}; pass a run dir such as "
            "outputs/runs/<time>, a .ckpt file, or resume=last"
        )
    if path.is_file():
        return path
    raise CharRNNError(
        f"resume={value}: no such run dir or checkpoint; use resume=last, a run dir such as "
        "outputs/runs/<time>, or a .ckpt file"
    )


def recorded_overrides(checkpoint: dict, run_dir: Path) -> list[str]:
    """The overrides the checkpoint's run was started with: recorded in the checkpoint, or else in
    Hydra's <run>/.hydra/overrides.yaml."""
    state = (checkpoint.get("callbacks") or {}).get(RECORD)
    if isinstance(state, dict) and isinstance(state.get("overrides"), list):
        return [str(o) for o in state["overrides"]]
    saved = run_dir / ".hydra" / "overrides.yaml"
    if saved.is_file():
        listed = yaml.safe_load(saved.read_text(encoding="utf-8")) or []
        return [str(o) for o in listed if override_key(str(o)) not in NOT_REPLAYED]
    raise CharRNNError(
        f"resume: cannot tell how {run_dir} was configured (no overrides in the checkpoint and no "
        ".hydra/overrides.yaml); use ckpt_path=<file> with the run's original overrides instead"
    )


def merge_overrides(first: list[str], then: list[str]) -> list[str]:
    """`first` with every key that `then` sets replaced by `then`'s value (flags kept in order)."""
    later = {override_key(o) for o in then if override_key(o) is not None}
    return [o for o in first if override_key(o) not in later] + list(then)


def resume_argv(argv: list[str], outputs: Path = OUTPUTS) -> list[str]:
    """Rewrites `train.py resume=X [overrides]` into the command that continues run X in place.

    The result replays the run's recorded overrides (new ones on the command line win), starts
    from its last.ckpt and sets hydra.run.dir to the run's own dir, so checkpoints, train.log and
    TensorBoard events continue there. Hydra's record of this invocation goes to
    <run>/.hydra/resume-<time>/, leaving the run's original .hydra files as they were.
    """
    args = argv[1:]
    values = [a.split("=", 1)[1] for a in args if override_key(a) == "resume" and "=" in a]
    if not values or values[-1] in ("", "null", "none", "None"):
        return argv
    if any(a in ("-m", "--multirun") for a in args):
        raise CharRNNError("resume=... continues one run; drop -m/--multirun")
    if any(override_key(a) == "ckpt_path" for a in args):
        raise CharRNNError("give resume=... or ckpt_path=..., not both")
    ckpt = locate_resume(values[-1], outputs).resolve()
    if ckpt.parent.name != "checkpoints":
        raise CharRNNError(
            f"resume={values[-1]}: {ckpt} is not inside a run's checkpoints/ dir, so there is no "
            "run to continue; start a new run from it with ckpt_path= and the original overrides"
        )
    run_dir = ckpt.parent.parent
    replayed = recorded_overrides(read_checkpoint(ckpt, key="resume", mmap=True), run_dir)
    new = [a for a in args if override_key(a) != "resume"]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    continuing = [
        f"resume={_quoted(values[-1])}",
        f"ckpt_path={_quoted(ckpt)}",
        f"hydra.run.dir={_quoted(run_dir)}",
        f"hydra.output_subdir=.hydra/resume-{stamp}",
    ]
    return [argv[0], *merge_overrides(merge_overrides(replayed, new), continuing)]

"""`resume=last | <run dir> | <last.ckpt>`: src/train.py rewrites its command line, before Hydra
starts, to continue that run in its dir with its recorded overrides. Needs torch, not Lightning."""

import re
from datetime import datetime
from pathlib import Path

from charrnn.errors import CharRNNError
from charrnn.run.checkpoints import read_checkpoint, resolve
from charrnn.run.config import hydra_quoted

OUTPUTS = Path("outputs")  # where hydra.run.dir / hydra.sweep.dir put runs (relative to the cwd)
NOT_REPLAYED = ("resume", "ckpt_path")  # overrides that name a checkpoint, not the run's config
RECORD = "ResumeState"  # the checkpoint["callbacks"] key of charrnn.run.guards.ResumeState's record


def override_key(override: str) -> str | None:
    """The config key an override sets (`+a.b=1` -> `a.b`), or None for flags like `-m`."""
    if override.startswith("-") or ("=" not in override and not override.startswith("~")):
        return None
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(value) -> str:
    """A path as a Hydra override value, quoted if it has characters the grammar treats apart."""
    text = str(value)
    return text if re.fullmatch(r"[\w/.\-]+", text) else hydra_quoted(text)


def recorded_overrides(checkpoint: dict, run_dir: Path) -> list[str]:
    """The overrides the checkpoint's run was started with (ResumeState records them)."""
    state = (checkpoint.get("callbacks") or {}).get(RECORD)
    if isinstance(state, dict) and isinstance(state.get("overrides"), list):
        return [str(o) for o in state["overrides"]]
    raise CharRNNError(
        f"resume: {run_dir}'s checkpoint does not record how the run was configured; use "
        "ckpt_path=<file> with the run's original overrides instead"
    )


def merge_overrides(first: list[str], then: list[str]) -> list[str]:
    """`first` with every key that `then` sets replaced by `then`'s value (flags kept in order)."""
    later = {override_key(o) for o in then if override_key(o) is not None}
    return [o for o in first if override_key(o) not in later] + list(then)


def resume_argv(argv: list[str], outputs: Path = OUTPUTS) -> list[str]:
    """`train.py resume=X [overrides]` as the command continuing run X in place: its overrides (new
    ones win), its last.ckpt, its dir; Hydra's record goes to <run>/.hydra/resume-<time>/."""
    args = argv[1:]
    values = [a.split("=", 1)[1] for a in args if override_key(a) == "resume" and "=" in a]
    if not values or values[-1] in ("", "null", "none", "None"):
        return argv
    if any(a in ("-m", "--multirun") for a in args):
        raise CharRNNError("resume=... continues one run; drop -m/--multirun")
    if any(override_key(a) == "ckpt_path" for a in args):
        raise CharRNNError("give resume=... or ckpt_path=..., not both")
    ckpt = resolve(values[-1], outputs, "resume")
    if not ckpt.is_file():
        raise CharRNNError(
            f"resume={values[-1]}: no such run dir or checkpoint; use resume=last, a run dir "
            "such as outputs/runs/<time>, or a .ckpt file"
        )
    ckpt = ckpt.resolve()
    if ckpt.parent.name != "checkpoints":
        raise CharRNNError(
            f"resume={values[-1]}: {ckpt} is not inside a run's checkpoints/ dir, so there is no "
            "run to continue; start a new run from it with ckpt_path= and the original overrides"
        )
    run_dir = ckpt.parent.parent
    replayed = recorded_overrides(read_checkpoint(ckpt, key="resume", mmap=True), run_dir)
    new = [a for a in args if override_key(a) != "resume"]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    in_place = [f"hydra.run.dir={_quoted(run_dir)}", f"hydra.output_subdir=.hydra/resume-{stamp}"]
    continuing = [f"resume={_quoted(values[-1])}", f"ckpt_path={_quoted(ckpt)}", *in_place]
    return [argv[0], *merge_overrides(merge_overrides(replayed, new), continuing)]

"""result.json: what one run leaves in its run dir so a sweep can compare it with the others.

Several writers fill in one run's file, one after another in the run's own process: the training
(metrics, rank 0 only), the entry point (a failure) and the sweep callback (overrides, wall time).
Every write merges into the file and replaces it atomically, so a reader never sees half a file.
Kept free of torch/Lightning imports: the process that launches a sweep reads these files too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULT_FILE = "result.json"


def is_rank_zero() -> bool:
    """False in the extra processes of a distributed run (rank from the launcher's environment)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return os.environ[key] == "0"
    return True


def read_result(run_dir: Path) -> dict:
    """The run's recorded fields, or {} when it has not written any."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def update_result(run_dir: Path, /, **fields) -> dict:
    """Merges `fields` into run_dir/result.json (temp file + rename); returns the whole record."""
    run_dir = Path(run_dir)
    record = {**read_result(run_dir), **fields}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RESULT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / RESULT_FILE)
    return record


def describe_error(err: BaseException) -> str:
    """One line naming the error: its type (unless it is our own user-facing one) and message."""
    from charrnn.errors import CharRNNError

    message = " ".join(str(err).split()) or type(err).__name__
    return message if isinstance(err, CharRNNError) else f"{type(err).__name__}: {message}"

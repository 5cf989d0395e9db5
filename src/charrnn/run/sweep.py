"""Each run's result.json, filled in by the job's own process (so every launcher and the Optuna
sweeper work alike), and the sweep's summary, best first (collected: no torch/Lightning here)."""

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from charrnn.errors import CharRNNError
from charrnn.files import write_atomically

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
ERROR_CHARS = 300  # of an error message in the printed/Markdown table
_KEYS = "job status overrides val_loss_best val_bpc params epochs wall_time_s best_checkpoint error"
_TITLES = {"val_loss_best": "val/loss_best", "val_bpc": "val/bpc", "wall_time_s": "wall time (s)"}
COLUMNS = {key: _TITLES.get(key, key.replace("_", " ")) for key in _KEYS.split()}  # result.json's
_NUMERIC = {"job", "val_loss_best", "val_bpc", "params", "epochs", "wall_time_s"}  # right-aligned


def is_rank_zero() -> bool:
    """False in the extra processes of a distributed run (rank from the launcher's environment)."""
    ranks = (os.environ[key] for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if key in os.environ)
    return next(ranks, "0") == "0"


def read_result(run_dir: Path) -> dict:
    """The run's recorded fields, or {} when it has not written any."""
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, "utf-8", newline=""))


def update_result(run_dir: Path, /, **fields) -> dict:
    """Merges `fields` into run_dir/result.json; returns the whole record."""
    record = {**read_result(run_dir), **fields}
    _write_text(Path(run_dir) / RESULT_FILE, json.dumps(record, indent=2, default=str) + "\n")
    return record


def describe_error(err: BaseException) -> str:
    """One line naming the error: its type (unless it is our own user-facing one) and message."""
    message = " ".join(str(err).split()) or type(err).__name__
    return message if isinstance(err, CharRNNError) else f"{type(err).__name__}: {message}"


class SweepSummary(Callback):
    """Records every job (failed ones included) and writes the sweep's summary when it ends."""

    def __init__(self, exit_on_failure: bool = True):
        self.exit_on_failure = exit_on_failure
        self._started: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not is_rank_zero():
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        fields = {
            "job": config.hydra.job.get("num"),
            "overrides": [o for o in config.hydra.overrides.task if not o.startswith("hydra.")],
            "run_dir": str(run_dir),
        }
        if self._started is not None:
            fields["wall_time_s"] = round(time.perf_counter() - self._started, 1)
        if job_return.status == JobStatus.FAILED:
            fields.update(status="failed", error=describe_error(job_return._return_value))
        elif "status" not in read_result(run_dir):
            fields.update(status="failed", error="the job recorded no result")
        update_result(run_dir, **fields)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        rows = collect(sweep_dir)
        if not rows:
            log.warning("sweep summary: no job results under %s", sweep_dir)
            return
        table = write_summary(rows, sweep_dir)
        where = f"{sweep_dir / SUMMARY_MD}, {sweep_dir / SUMMARY_CSV}"
        log.info("sweep summary (%s):\n%s", where, table)
        if failed := sum(row.get("status") != "ok" for row in rows):
            log.error("%d of %d jobs failed; their errors are in the summary", failed, len(rows))
            if self.exit_on_failure:
                raise SystemExit(1)


def collect(sweep_dir: Path) -> list[dict]:
    """Every job under sweep_dir, best val/loss_best first, then failed jobs by job number."""
    rows = []
    for job_dir in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        overrides = job_dir / ".hydra" / "overrides.yaml"
        record = read_result(job_dir)
        if not record and overrides.exists():  # else not a job dir (.submitit, ...)
            record = dict(
                status="failed", run_dir=str(job_dir), error="the job left no result.json"
            )
            record["overrides"] = list(OmegaConf.load(overrides))
        if record:
            rows.append(record)

    def order(row):
        loss, job = row.get("val_loss_best"), row.get("job")
        if row.get("status") == "ok" and isinstance(loss, (int, float)) and math.isfinite(loss):
            return (0, loss, 0)
        return (1, 0.0, job if isinstance(job, int) else 1 << 30)

    return sorted(rows, key=order)


def _markdown_cell(row: dict, key: str, sweep_dir: Path, shown: set) -> str:
    """Rounded numbers, only the overrides that tell the rows apart, paths from the sweep dir."""
    value = row.get(key)
    if value is None or value == "":
        return ""
    if key == "overrides":
        value = " ".join(o for o in value if o in shown)
    elif key in ("val_loss_best", "val_bpc"):
        value = f"{value:.4f}"
    elif key == "params":
        value = f"{value:,}"
    elif key == "best_checkpoint" and Path(value).is_relative_to(sweep_dir):
        value = Path(value).relative_to(sweep_dir)
    elif key == "error" and len(value) > ERROR_CHARS:
        value = value[: ERROR_CHARS - 3] + "..."  # the whole message is in summary.csv
    return str(value).replace("|", "\\|")


def write_summary(rows: list[dict], sweep_dir: Path) -> str:
    """summary.csv (every value as recorded) and summary.md (the table, returned for printing)."""
    lists = [set(row.get("overrides") or []) for row in rows]
    common = set.intersection(*lists) if len(lists) > 1 else set()
    shown = set().union(*lists) - common
    cells = [[_markdown_cell(row, key, sweep_dir, shown) for key in COLUMNS] for row in rows]
    lines = [
        "| " + " | ".join(COLUMNS.values()) + " |",
        "|" + "|".join("---:" if key in _NUMERIC else "---" for key in COLUMNS) + "|",
        *("| " + " | ".join(row_cells) + " |" for row_cells in cells),
    ]
    if common:
        lines += ["", "Common to every job: `" + " ".join(sorted(common)) + "`"]
    table = "\n".join(lines)
    text = io.StringIO()  # a row's missing or None values are empty cells
    joined = ({**row, "overrides": " ".join(row.get("overrides") or [])} for row in rows)
    csv.DictWriter(text, COLUMNS, extrasaction="ignore").writerows([COLUMNS, *joined])
    _write_text(sweep_dir / SUMMARY_CSV, text.getvalue())
    _write_text(sweep_dir / SUMMARY_MD, table + "\n")
    return table

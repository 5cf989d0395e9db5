"""Quality per CPU-hour from finished runs: best val/loss (and val/loss_w256) reached by each
minute mark, read from the runs' TensorBoard events (their wall-clock times).

    python bench/curve.py outputs/runs/<run> [outputs/runs/<other run> ...] [--marks 10,20,30,60]

Minutes count from the run's first event (the logger starts with the fit, after start-up)."""

import argparse
import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run: Path) -> tuple[float, dict[str, list[tuple[float, int, float]]]]:
    """The run's first event time and each val/ tag's (wall time, step, value) series."""
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    series = {
        tag: [(e.wall_time, e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag in ("val/loss", "val/loss_w256")
    }
    if "val/loss" not in series:
        raise SystemExit(f"{run}: no val/loss in its TensorBoard events")
    return events.FirstEventTimestamp(), series


def best_by(series: list[tuple[float, int, float]], start: float, minutes: float) -> float:
    reached = [value for time, _, value in series if time - start <= 60 * minutes]
    return min(reached, default=math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--marks", default="10,20,30,40,50,60", help="minutes, comma-separated")
    args = parser.parse_args()
    marks = [float(m) for m in args.marks.split(",")]
    print("| run | " + " | ".join(f"{m:g} min" for m in marks) + " | best (w256) | at | ended |")
    print("|---|" + "---:|" * (len(marks) + 3))
    for run in args.runs:
        start, series = scalars(run)
        loss = series["val/loss"]
        end = (loss[-1][0] - start) / 60  # marks after the last validation: left blank
        cells = [f"{best_by(loss, start, m):.4f}" if m <= end + 1 else "" for m in marks]
        at, step, best = min(loss, key=lambda point: point[2])
        w256 = {s: v for _, s, v in series.get("val/loss_w256", [])}.get(step)
        best_cell = f"{best:.4f}" + (f" ({w256:.4f})" if w256 is not None else "")
        print(
            f"| {run.name} | "
            + " | ".join(cells)
            + f" | {best_cell} | {(at - start) / 60:.1f} min | {end:.1f} min |"
        )


if __name__ == "__main__":
    main()

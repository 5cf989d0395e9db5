"""The benchmark's scale section: charrnn on a synthetic UTF-8 corpus of 1, 10, 100 and 1,000 MB.

For each size, in processes of their own so each peak RSS (VmHWM) is that process's alone:
- first run: read, vocabulary, encode and write the ids cache (`encode_corpus`, no cache yet);
- second run: `python src/train.py data.path=<corpus>` (the default model) from launch to its
  first training step, reading the cache memory-mapped, and its peak RSS over a few steps;
- for the sizes in --naive, nanoGPT's prepare.py way (a Python dict lookup per character).

    python bench/scale.py --sizes 1,10,100,1000      # `make bench` runs it as its scale section
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTIBYTE = "éü—…€😀"  # 2-, 3- and 4-byte UTF-8, mixed into the corpora
TRAIN_STEPS = 5  # steps of the second run: its peak RSS is taken while it trains


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the
    parent, which may be the (large) benchmark process."""
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    return int(hwm.split()[1]) / 1024


def stats(values) -> dict:
    values = list(values)
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def synthetic_text(chars: int, seed: int = 0) -> str:
    """Play-like text of our own making (no download, nothing third-party)."""
    rng = random.Random(seed)
    words = (
        "the a my thy good sweet night day love fair light dark moon sun star heart hand "
        "come go stay speak hear see know will shall now here there what why thou"
    ).split()
    parts, size = [], 0
    while size < chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        block = f"{rng.choice(['ROMEO', 'JULIET', 'NURSE'])}:\n{line.capitalize()}.\n\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)[:chars]


def make_corpus(text: str, megabytes: float, path: Path) -> None:
    """`text` with a multibyte character every ~1000 characters, repeated to `megabytes` MB."""
    unit = "".join(
        text[i : i + 997] + MULTIBYTE[(i // 997) % len(MULTIBYTE)] for i in range(0, len(text), 997)
    ).encode("utf-8")
    left = int(megabytes * 1_000_000)
    with open(path, "wb") as f:
        while left > 0:
            piece = unit[:left].decode("utf-8", errors="ignore").encode("utf-8")
            f.write(piece)
            left = 0 if len(piece) < len(unit) else left - len(piece)
    # a corpus as users have one, written before the first run: with an mtime this fresh the ids
    # cache would not trust its digest memo until the file is 2 s old (see corpus.RACY_NS)
    os.utime(path, (time.time() - 3600,) * 2)


FIRST_RUN = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from charrnn.corpus import corpus_files, encode_corpus
from scale import peak_rss_mb
mode, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "naive":  # nanoGPT's prepare.py: a Python dict lookup per character
    text = Path(path).read_text(encoding="utf-8")
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
else:
    vocab, ids = encode_corpus(corpus_files(path))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb(), "chars": int(len(ids))}))
"""


def child_env() -> dict:
    """Children import this checkout's charrnn, and scale / first_step from bench/."""
    paths = [str(ROOT / "src"), str(ROOT / "bench"), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))


def first_run(mode: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_RUN, mode, str(path)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def second_run(path: Path, run_dir: Path, train_args: list[str]) -> dict:
    """`src/train.py` on the cached corpus: seconds from launch to its first step, peak RSS."""
    marker = run_dir.with_suffix(".json")
    command = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        f"data.path={path}",
        *train_args,
        f"++trainer.max_steps={TRAIN_STEPS}",
        "++trainer.limit_val_batches=2",  # the sanity check's two batches, not 10% of a gigabyte
        f"hydra.run.dir={run_dir}",
        "+callbacks.first_step._target_=first_step.FirstStepClock",
    ]
    launched = time.time()
    env = dict(child_env(), BENCH_FIRST_STEP_FILE=str(marker))
    subprocess.run(command, cwd=run_dir.parent, env=env, check=True, capture_output=True)
    clock = json.loads(marker.read_text())
    seconds = clock["first_step"] - launched
    return {"first_step_s": seconds, "rss_mb": clock["peak_rss_mb"], **clock}


def scale_section(
    sizes_mb, workdir: Path, rounds: int = 1, naive_mb=(), train_args=(), text: str = ""
) -> dict:
    """Every size's first and second runs, `rounds` times each; the corpus is deleted after."""
    text = text or synthetic_text(1_000_000)
    result = {}
    for mb in sizes_mb:
        path = workdir / f"corpus-{mb:g}MB.txt"
        make_corpus(text, mb, path)
        runs = {k: [] for k in ("first_run", "second_run", "naive")}
        for r in range(rounds):
            for cache in workdir.glob(f".{path.name}.*"):  # the ids cache beside the corpus
                cache.unlink()
            runs["first_run"].append(first_run("cached", path))
            runs["second_run"].append(second_run(path, workdir / f"run-{mb:g}MB-{r}", train_args))
            if mb in naive_mb:
                runs["naive"].append(first_run("naive", path))
        row = {"bytes": path.stat().st_size, "chars": runs["first_run"][0]["chars"]}
        for name in ("first_run", "naive"):
            if runs[name]:
                row[f"{name}_s"] = stats(v["seconds"] for v in runs[name])
                row[f"{name}_rss_mb"] = stats(v["rss_mb"] for v in runs[name])
        row["first_step_s"] = stats(v["first_step_s"] for v in runs["second_run"])
        row["first_step_rss_mb"] = stats(v["first_step_rss_mb"] for v in runs["second_run"])
        row["second_run_rss_mb"] = stats(v["rss_mb"] for v in runs["second_run"])
        print(f"  {mb:g} MB: {table_row(row)}", flush=True)
        result[f"{mb:g}MB"] = row
        for cache in workdir.glob(f".{path.name}.*"):
            cache.unlink()
        path.unlink()
    return result


def table_row(row: dict) -> str:
    m = {k: v["median"] for k, v in row.items() if isinstance(v, dict)}
    naive = f"; per-char Python {m['naive_s']:.2f} s" if "naive_s" in m else ""
    return (
        f"first run {m['first_run_s']:.2f} s, {m['first_run_rss_mb']:.0f} MB peak RSS; "
        f"second run: first step after {m['first_step_s']:.2f} s, peak RSS "
        f"{m['first_step_rss_mb']:.0f} MB by then, {m['second_run_rss_mb']:.0f} MB over "
        f"{TRAIN_STEPS} steps{naive}"
    )


def table(results: dict) -> list[str]:
    lines = [
        "Scale: first run (read + vocabulary + encode + cache) and second run (`src/train.py`, "
        "the cache memory-mapped, to its first step); each a fresh process, its peak RSS"
    ]
    lines += [f"  {size:>7}: {table_row(row)}" for size, row in results.items()]
    return lines


def main(argv=None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100,1000", help="corpus sizes in MB, e.g. 1,10")
    parser.add_argument("--rounds", type=int, default=1, help="repeats of every measurement")
    parser.add_argument("--naive", default="", help="sizes (MB) to also encode per character")
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    naive = [float(s) for s in args.naive.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="charrnn-scale-") as tmp:
        results = scale_section(sizes, Path(tmp), args.rounds, naive)
    print("\n".join(table(results)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

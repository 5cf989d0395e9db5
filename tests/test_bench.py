"""The benchmark itself runs: `bench/run.py --quick --smoke` finishes and writes its JSON."""

import json
import os
import subprocess
import sys

from conftest import ROOT

STATS = {"min", "median", "max", "n"}


def _is_stats(value) -> bool:
    return isinstance(value, dict) and STATS <= set(value) and value["min"] <= value["max"]


def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--smoke", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Training:" in done.stdout and "Generation:" in done.stdout

    results = json.loads(out.read_text())
    meta = results["meta"]
    assert meta["mode"] == "smoke" and meta["torch"] and meta["cpu"] and meta["threads"] >= 1
    assert set(results) >= {"meta", "machine", "train", "generate", "scale", "startup"}
    assert _is_stats(results["machine"]["matmul_gflops"])
    for cell in ("gru", "lstm"):
        rows = results["train"][cell]
        assert {"charrnn_32", "loop"} <= set(rows)
        for name in ("charrnn_32", "loop"):
            assert all(_is_stats(rows[name][k]) for k in ("chars_per_s", "mfu", "speed_vs_loop"))
        assert rows["charrnn_32"]["chars_per_s"]["min"] > 0
        assert 0 <= rows["charrnn_32"]["steal"]["max"] <= 1
        # the bf16 rows (charrnn auto, the autocast loop) exactly where the CPU has bf16 units
        bf16 = results["train"]["bf16"] == "supported"
        assert ("charrnn_auto" in rows) == ("loop_bf16" in rows) == bf16
        for batch in ("batch1", "batch5"):
            row = results["generate"][cell][batch]
            assert _is_stats(row["sampler_chars_per_s"]) and _is_stats(row["loop_chars_per_s"])
            assert row["bound_chars_per_s"] > 0
        assert results["generate"][cell]["pt2_time_vs_sampler"]["min"] > 0
    assert "charrnn_impl_torch" in results["train"]["gru"]
    for row in results["scale"].values():
        keys = ("first_run_s", "first_run_rss_mb", "first_step_s", "second_run_rss_mb")
        assert all(_is_stats(row[k]) for k in keys)
        assert row["chars"] > 0
    startup = results["startup"]
    assert _is_stats(startup["first_step_s"]) and startup["first_step_s"]["min"] > 0
    assert _is_stats(startup["import_charrnn.run.train_s"])
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # nothing else left here


def test_without_corpus_it_takes_the_verified_download(tmp_path, monkeypatch):
    """`make bench` (no --corpus) reads the cached tiny Shakespeare, one file."""
    import importlib

    import charrnn.corpus

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as `python bench/run.py` has it
    bench = importlib.import_module("run")
    cached = tmp_path / "shakespeare.txt"
    monkeypatch.setattr(charrnn.corpus, "locate_corpus", lambda path, *args: [cached])
    assert bench.corpus_file(None) == cached
    assert bench.corpus_file(str(tmp_path / "own.txt")) == tmp_path / "own.txt"

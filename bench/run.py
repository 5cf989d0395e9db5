"""`make bench`: how fast charrnn trains, samples, reads data and starts, side by side.

Both sides of each comparison run interleaved (A B A B ...: training step by step, with the
hand-written loop in a process of its own), so a busy machine slows both alike and the ratios are
the figures to quote. Prints one table and writes bench/results.json with min/median/max of every
figure over its repeats, the torch version, thread count and CPU model.

    python bench/run.py             # full, < 15 min
    python bench/run.py --quick     # < 3 min
    python bench/run.py --smoke     # seconds, tiny model: checks that the benchmark runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scale  # bench/scale.py: the scale section
import torch
import torch.nn.functional as F
from torch import nn

import charrnn
from charrnn.errors import CharRNNError, exit_with
from charrnn.fused_gru import bf16_matmul_supported, onednn_linear, onednn_products

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(charrnn.__file__).resolve().parents[1]  # child processes import the same charrnn

SECTIONS = ("machine", "train", "generate", "scale", "startup")


@dataclass(frozen=True)
class Plan:
    """Sizes and repeat counts of one benchmark mode."""

    embedding_dim: int
    rnn_units: int
    batch_size: int
    seq_length: int
    rounds: int  # training runs of every variant, each step paired with a hand-written-loop step
    warmup: int  # untimed steps at the start of each run
    steps: int  # timed steps per run
    gen_length: int
    gen_rounds: int
    scale_mb: tuple[float, ...]
    naive_mb: tuple[float, ...]  # sizes the one-character-at-a-time baseline encodes
    scale_rounds: int
    startup_rounds: int
    matmul_size: int
    imports: tuple[str, ...] = (
        "torch",
        "lightning",
        "charrnn",
        "charrnn.sampling",
        "charrnn.run.train",
    )


TUTORIAL = {"embedding_dim": 256, "rnn_units": 1024, "batch_size": 64, "seq_length": 100}
PLANS = {
    "full": Plan(**TUTORIAL, rounds=2, warmup=2, steps=8, gen_length=1000, gen_rounds=3,
                 scale_mb=(1, 10, 100, 1000), naive_mb=(1, 10, 100), scale_rounds=3,
                 startup_rounds=3, matmul_size=2048),
    "quick": Plan(**TUTORIAL, rounds=1, warmup=2, steps=6, gen_length=1000, gen_rounds=2,
                  scale_mb=(1, 10, 100), naive_mb=(1, 10), scale_rounds=2,
                  startup_rounds=2, matmul_size=2048),
    "smoke": Plan(embedding_dim=16, rnn_units=32, batch_size=8, seq_length=16, rounds=1,
                  warmup=1, steps=2, gen_length=20, gen_rounds=2, scale_mb=(0.01,),
                  naive_mb=(0.01,), scale_rounds=1, startup_rounds=1, matmul_size=256,
                  imports=("charrnn.run.train",)),  # each import is a child process: seconds
}  # fmt: skip


def stats(values) -> dict:
    """min/median/max over repeats (on a shared machine noise only slows: min is the best case)."""
    values = [float(v) for v in values]
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def median(values) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------- machine


def steal_now() -> tuple[int, int]:
    from charrnn.run.train import cpu_steal  # (steal, all) CPU time so far, from /proc/stat

    return cpu_steal()


def steal_since(start: tuple[int, int]) -> float:
    """The fraction of CPU time the hypervisor took from this VM since `start` (steal_now())."""
    (s0, a0), (s1, a1) = start, steal_now()
    return (s1 - s0) / (a1 - a0) if a1 > a0 else 0.0


STEAL_FLAG = 0.05  # above this share of stolen CPU time a figure is marked as taken on a busy host


class Machine:
    """The fp32 (and, where the CPU has it, bf16) matmul peak and the read bandwidths, probed at
    the start and again between runs.

    A busy moment only lowers a probe, so the best probe so far is taken as the machine's limit.
    """

    def __init__(self, plan: Plan, smoke: bool):
        n = self.size = plan.matmul_size
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        self.bf16 = bf16_matmul_supported()
        self.a16, self.b16 = self.a.bfloat16(), self.b.bfloat16()
        self.packed = {}  # oneDNN's prepacked right operands, where it runs that dtype
        for a, b in ((self.a, self.b), (self.a16, self.b16)):
            if onednn_products(a.dtype):
                self.packed[a.dtype] = torch.ops.mkldnn._reorder_linear_weight(
                    b.t().contiguous(), n
                )
                onednn_linear(a, self.packed[a.dtype])  # its first call sets the kernel up
        self.calls = 10 if smoke else 50
        self.recurrent = torch.randn(3072, 1024)  # GRU-1024's recurrent weights: 12.6 MB, in cache
        self.samples = {"matmul_gflops": [], "cache_read_gbps": [], "memory_read_gbps": []}
        if self.bf16:
            self.samples["bf16_matmul_gflops"] = []
        # 256 MB does not fit in any cache
        big = torch.randn(256, 1024) if smoke else torch.randn(16384, 4096)
        self.samples["memory_read_gbps"] = [_read_gbps(big, 2) for _ in range(2 if smoke else 5)]
        self.probe(3 if smoke else 10)

    def probe(self, repeats: int = 2) -> None:
        for _ in range(repeats):
            self.samples["matmul_gflops"].append(self.gflops(self.a, self.b))
            if self.bf16:
                self.samples["bf16_matmul_gflops"].append(self.gflops(self.a16, self.b16))
            self.samples["cache_read_gbps"].append(_read_gbps(self.recurrent, self.calls))

    def gflops(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """a @ b by the faster of torch.mm and oneDNN's prepacked linear (on AMD, torch.mm's
        fp32 is MKL's AVX2 code: half of oneDNN's AVX-512 sgemm)."""
        seconds = timed(torch.mm, a, b)
        if a.dtype in self.packed:
            seconds = min(seconds, timed(onednn_linear, a, self.packed[a.dtype]))
        return 2 * self.size**3 / seconds / 1e9

    @property
    def peak_gflops(self) -> float:
        return max(self.samples["matmul_gflops"])

    @property
    def peak_bf16_gflops(self) -> float | None:
        return max(self.samples["bf16_matmul_gflops"]) if self.bf16 else None

    @property
    def cache_gbps(self) -> float:
        return max(self.samples["cache_read_gbps"])

    def results(self) -> dict:
        return {
            **{k: stats(v) for k, v in self.samples.items()},
            "matmul_size": self.size,
            "bf16_matmul": "supported" if self.bf16 else "unsupported",
        }


def _read_gbps(w: torch.Tensor, calls: int) -> float:
    """GB/s read by the fastest of a few one-pass kernels over `w`."""
    x, flat = torch.randn(w.shape[1]), w.view(-1)
    kernels = (lambda: torch.mv(w, x), lambda: w.sum(), lambda: torch.dot(flat, flat))
    for kernel in kernels:
        kernel()
    best = min(timed(lambda k=kernel: [k() for _ in range(calls)]) for kernel in kernels)
    return calls * w.numel() * 4 / best / 1e9


# ------------------------------------------------------------------------------------------ train


def train_flops(cell: str, plan: Plan, vocab_size: int) -> float:
    """Matmul FLOPs of one training step: forward, plus twice that for the backward pass."""
    gates = 3 if cell == "gru" else 4
    e, h = plan.embedding_dim, plan.rnn_units
    per_char = 2 * (gates * h * (e + h) + h * vocab_size)
    return 3 * per_char * plan.batch_size * plan.seq_length


def lightning_paired(overrides: list[str], plan: Plan, run_dir: Path, loop: HandLoopProcess):
    """Steady-state seconds per step of our real path, each step paired with one `loop` step.

    build(cfg) and Trainer.fit, as `train` does (logger, progress bar, callbacks; sanity check and
    validation off). After every Lightning step a callback runs and times one step of the
    hand-written loop, so the two alternate step by step (A B A B ...). A Lightning step is the time
    from the end of that callback to the end of the next batch: batch fetch, step, logging, progress
    bar, hooks.
    """
    import lightning as L

    from charrnn.run.train import build

    # validation is off here, so the checkpoint callback cannot find val/loss: expected, not news
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")

    class Alternate(L.Callback):
        def __init__(self):
            self.ours, self.theirs, self.resumed = [], [], None

        def on_train_batch_end(self, *args) -> None:
            if self.resumed is not None:
                self.ours.append(time.perf_counter() - self.resumed)
            self.theirs.append(timed(loop.step))
            self.resumed = time.perf_counter()

    settings = [
        f"++trainer.max_steps={plan.warmup + plan.steps}",
        "trainer.max_epochs=-1",
        "trainer.num_sanity_val_steps=0",
        "++trainer.limit_val_batches=0",
    ]
    datamodule, module, trainer = build(compose_train(run_dir, *overrides, *settings))
    pairs = Alternate()
    trainer.callbacks.append(pairs)
    trainer.fit(module, datamodule=datamodule)
    return pairs.ours[plan.warmup - 1 :], pairs.theirs[plan.warmup :]


def compose_train(run_dir: Path, *overrides: str):
    """The real train config with `overrides`, as src/train.py's Hydra app gives it to a run in
    run_dir (tests/conftest.py has the same for the tests, which a script cannot import)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    import charrnn.run  # noqa: F401  (registers the config's resolvers)

    with initialize_config_dir(config_dir=str(SRC.parent / "conf"), version_base="1.3"):
        cfg = compose("train", [f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    return cfg


class HandLoop:
    """What a user writes instead: Embedding → nn.GRU/nn.LSTM → Linear, Adam, shuffled windows;
    with `bf16`, the one line a user adds on a CPU with bf16 matrix units: an autocast around the
    forward."""

    def __init__(self, cell: str, plan: Plan, train_ids: np.ndarray, vocab_size: int, bf16: bool):
        torch.manual_seed(0)
        self.plan, self.vocab_size, self.bf16 = plan, vocab_size, bf16
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.embedding = nn.Embedding(vocab_size, plan.embedding_dim)
        self.rnn = rnn(plan.embedding_dim, plan.rnn_units, batch_first=True)
        self.head = nn.Linear(plan.rnn_units, vocab_size)
        params = [p for m in (self.embedding, self.rnn, self.head) for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=1e-3)
        self.data = torch.from_numpy(train_ids.astype(np.int64))
        self.windows = (len(self.data) - 1) // plan.seq_length
        self.order, self.batch = torch.randperm(self.windows), 0

    def step(self) -> float:
        b, t = self.plan.batch_size, self.plan.seq_length
        k = self.batch % (self.windows // b)
        self.batch += 1
        starts = self.order[k * b : (k + 1) * b] * t
        block = self.data[starts[:, None] + torch.arange(t + 1)]
        inputs, targets = block[:, :-1], block[:, 1:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out, _ = self.rnn(self.embedding(inputs))
            logits = self.head(out)
        loss = F.cross_entropy(logits.float().reshape(-1, self.vocab_size), targets.reshape(-1))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


def hand_loop_worker(spec: str) -> int:
    """Child-process side of HandLoopProcess: one step per "step" line on stdin, seconds back."""
    spec = json.loads(spec)
    plan, ids = Plan(**spec["plan"]), np.load(spec["ids"])
    loop = HandLoop(spec["cell"], plan, ids, spec["vocab_size"], spec["bf16"])
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(timed(loop.step), flush=True)
    return 0


class HandLoopProcess:
    """The hand-written loop in a process of its own, driven one step at a time over a pipe.

    Nothing this process sets up for our path (such as the allocator settings of
    charrnn.run.train.build) can help it, and whichever side is not running waits on the pipe.
    """

    def __init__(self, cell: str, plan: Plan, ids_file: Path, vocab_size: int, bf16: bool):
        spec = {"cell": cell, "plan": asdict(plan), "ids": str(ids_file), "vocab_size": vocab_size}
        spec["bf16"] = bf16
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--hand-loop", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )

    def step(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the hand-written loop process exited ({self.process.wait()})")
        return float(line)

    def close(self) -> None:
        self.process.stdin.close()
        if self.process.wait(timeout=60) != 0:
            raise RuntimeError("the hand-written loop process failed")


def child_env(*extra: Path) -> dict:
    """The environment for child processes: they import the same charrnn as this one."""
    paths = [str(SRC), *map(str, extra), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))


def train_section(plan: Plan, corpus: Path, workdir: Path, machine: Machine) -> dict:
    from charrnn.corpus import encode_corpus
    from charrnn.data import split_ids

    vocab, ids = encode_corpus([corpus], cache=False)
    train_ids, _ = split_ids(ids, 0.1)
    size = [
        f"model.embedding_dim={plan.embedding_dim}",
        f"model.rnn_units={plan.rnn_units}",
        f"data.batch_size={plan.batch_size}",
        f"data.seq_length={plan.seq_length}",
        f"data.path={corpus}",
        "experiment=tutorial",
    ]
    fp32 = "trainer.precision=32-true"
    # (cell, name) -> (the Lightning run's overrides, the hand-written loop it is paired with)
    variants = {
        ("gru", "charrnn_32"): ([*size, fp32], "loop"),
        ("gru", "charrnn_impl_torch"): ([*size, fp32, "model.impl=torch"], "loop"),
        ("lstm", "charrnn_32"): ([*size, fp32, "model=lstm"], "loop"),
    }
    if machine.bf16:  # trainer.precision=auto (the default) is bf16-mixed here
        variants[("gru", "charrnn_auto")] = (size, "loop_bf16")
        variants[("lstm", "charrnn_auto")] = ([*size, "model=lstm"], "loop_bf16")
    ids_file = workdir / "train_ids.npy"
    np.save(ids_file, train_ids)
    loops = {
        (cell, loop): HandLoopProcess(cell, plan, ids_file, vocab.size, loop == "loop_bf16")
        for (cell, _), (_, loop) in variants.items()
    }
    steps = {key: [] for key in [*variants, *loops]}
    ratios, steal = {key: [] for key in steps}, {key: [] for key in steps}
    for r in range(plan.rounds):
        for (cell, name), (overrides, loop) in variants.items():
            machine.probe()
            started = steal_now()
            ours, theirs = lightning_paired(
                overrides, plan, workdir / f"{cell}-{name}-{r}", loops[(cell, loop)]
            )
            stolen = steal_since(started)
            steps[(cell, name)] += ours
            steps[(cell, loop)] += theirs
            ratios[(cell, name)] += [lo / us for us, lo in zip(ours, theirs, strict=True)]
            ratios[(cell, loop)] += [1.0] * len(theirs)
            steal[(cell, name)].append(stolen)
            steal[(cell, loop)].append(stolen)
            print(
                f"  train {cell} {name} round {r}: {median(ours):.3f} s/step, paired {loop} "
                f"{median(theirs):.3f} s/step; steal {stolen:.1%}"
                + ("  (busy host: above 5%)" if stolen > STEAL_FLAG else ""),
                flush=True,
            )
    for process in loops.values():
        process.close()
    chars = plan.batch_size * plan.seq_length
    result = {
        "batch_size": plan.batch_size,
        "seq_length": plan.seq_length,
        "embedding_dim": plan.embedding_dim,
        "rnn_units": plan.rnn_units,
        "vocab_size": vocab.size,
        "bf16": "supported" if machine.bf16 else "unsupported",
    }
    for (cell, name), seconds in steps.items():
        flops = train_flops(cell, plan, vocab.size)
        row = {
            "step_s": stats(seconds),
            "chars_per_s": stats(chars / s for s in seconds),
            "mfu": stats(flops / s / 1e9 / machine.peak_gflops for s in seconds),
            # paired loop step / our step, pair by pair: > 1 means faster than that loop
            "speed_vs_loop": stats(ratios[(cell, name)]),
            "steal": stats(steal[(cell, name)]),
        }
        if machine.bf16:
            row["mfu_bf16"] = stats(flops / s / 1e9 / machine.peak_bf16_gflops for s in seconds)
        if name.startswith("charrnn"):
            row["epoch_s_per_million_chars"] = stats(s / chars * 1e6 for s in seconds)
        result.setdefault(cell, {})[name] = row
        result[cell]["flops_per_step"] = flops
    for cell in ("gru", "lstm"):  # the bf16 path against the fp32 loop: medians of two pairings
        if machine.bf16:
            auto, loop = result[cell]["charrnn_auto"], result[cell]["loop"]
            auto["vs_fp32_loop"] = loop["step_s"]["median"] / auto["step_s"]["median"]
    return result


# --------------------------------------------------------------------------------------- generate


def generate_section(plan: Plan, machine: Machine, checkpoint: str | None, corpus: Path) -> dict:
    """generation_speed's interleaved timing (our Sampler at each weight precision vs the
    tutorial's one-call-per-character loop over plain nn.GRU / nn.LSTM), set against the
    machine's limits; and, with a trained checkpoint, each precision's quality against fp32."""
    from generation_speed import (
        SHAKESPEARE_CHARS,
        WEIGHTS,
        measure_export,
        measure_generation,
        measure_quality,
    )

    from charrnn.sampling import resolve_precision

    e, h, v = plan.embedding_dim, plan.rnn_units, len(SHAKESPEARE_CHARS)
    default = resolve_precision("auto")
    result = {"length": plan.gen_length, "prompt": "ROMEO:", "default_precision": default}
    for cell in ("gru", "lstm"):
        machine.probe()
        speeds = measure_generation(
            cell, e, h, 1, plan.gen_length, batches=(1, 5), repeats=plan.gen_rounds
        )
        gates = 3 if cell == "gru" else 4
        # per character: the recurrent matrix and the head; the input side is a table lookup
        weights = gates * h * h + h * v
        cache_bw = machine.cache_gbps * 1e9
        for batch in (1, 5):
            loop = speeds[f"tutorial_b{batch}"]
            row = result.setdefault(cell, {})[f"batch{batch}"] = {"loop_chars_per_s": stats(loop)}
            for precision in WEIGHTS:
                ours = speeds[f"{precision}_b{batch}"]
                size = {"fp32": 4, "bf16": 2, "int8": 1}[precision]  # bytes per weight
                peak = machine.peak_gflops if precision == "fp32" else machine.peak_bf16_gflops
                read_bound = batch * cache_bw / (size * weights)
                compute_bound = (peak or machine.peak_gflops) * 1e9 / (2 * weights)
                bound = min(read_bound, compute_bound)
                print(
                    f"  generate {cell} batch {batch} {precision}: sampler {median(ours):,.0f} "
                    f"chars/s, loop {median(loop):,.0f}",
                    flush=True,
                )
                row[precision] = {
                    "chars_per_s": stats(ours),
                    "vs_loop": stats(a / b for a, b in zip(ours, loop, strict=True)),
                    "bound_chars_per_s": bound,
                    "bound_kind": "compute" if compute_bound < read_bound else "cache bandwidth",
                    "fraction_of_bound": stats(c / bound for c in ours),
                }
            ours = row[default]  # the default precision's figures under the names they had
            row["sampler_chars_per_s"], row["sampler_vs_loop"] = (
                ours["chars_per_s"],
                ours["vs_loop"],
            )
            row["bound_chars_per_s"] = ours["bound_chars_per_s"]
            row["sampler_fraction_of_bound"] = ours["fraction_of_bound"]
        for precision in WEIGHTS:  # time of batch 5 / time of batch 1, per repeat
            b1, b5 = speeds[f"{precision}_b1"], speeds[f"{precision}_b5"]
            result[cell][f"batch5_time_vs_batch1_{precision}"] = stats(
                5 * a / b for a, b in zip(b1, b5, strict=True)
            )
        result[cell]["batch5_time_vs_batch1"] = result[cell][f"batch5_time_vs_batch1_{default}"]
        machine.probe()  # the exported .pt2 (the README's loop) against the Sampler, batch 1
        pt2 = measure_export(cell, e, h, plan.gen_length, plan.gen_rounds, (default,))
        pairs = zip(pt2[f"{default}_sampler"], pt2[f"{default}_pt2"], strict=True)
        result[cell]["pt2_time_vs_sampler"] = stats(a / b for a, b in pairs)
    if checkpoint:
        result["quality"] = measure_quality(checkpoint, str(corpus), greedy_length=plan.gen_length)
        result["quality_of"] = {"checkpoint": checkpoint, "corpus": str(corpus)}
    return result


# ------------------------------------------------------------------------------------------ scale


def scale_section(plan: Plan, workdir: Path, smoke: bool) -> dict:
    """bench/scale.py's measurements at the plan's sizes (smoke: a tiny model for the second run)."""
    tiny = ["size=tiny", "data.batch_size=8", "data.seq_length=16"] if smoke else []
    sizes, rounds = plan.scale_mb, plan.scale_rounds
    return scale.scale_section(sizes, workdir, rounds, plan.naive_mb, tiny)


# ---------------------------------------------------------------------------------------- startup


# Plan.imports: what each entry point pays before it does anything (torch, lightning for scale)
IMPORT_CHILD = "import sys, time; t = time.perf_counter(); __import__(sys.argv[1]); " + (
    "print(time.perf_counter() - t)"
)


def startup_section(plan: Plan, corpus: Path, workdir: Path) -> dict:
    """Wall seconds from launching `python src/train.py size=tiny` to its first training step."""
    env = child_env(ROOT / "bench")  # bench/ for first_step.FirstStepClock
    train_py = ROOT / "src" / "train.py"
    imports = {name: [] for name in plan.imports}
    python, first_step, whole = [], [], []
    for r in range(plan.startup_rounds):
        python.append(timed(subprocess.run, [sys.executable, "-c", "pass"], check=True))
        for name in plan.imports:  # timed inside the child: interpreter start and exit not included
            done = subprocess.run(
                [sys.executable, "-c", IMPORT_CHILD, name],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            imports[name].append(float(done.stdout))
        marker = workdir / f"first-step-{r}"
        command = [
            sys.executable,
            str(train_py),
            "size=tiny",
            f"data.path={corpus}",
            "++trainer.max_steps=1",
            f"hydra.run.dir={workdir / f'startup-{r}'}",
            "+callbacks.first_step._target_=first_step.FirstStepClock",
        ]
        launched = time.time()
        subprocess.run(
            command,
            cwd=workdir,
            env=dict(env, BENCH_FIRST_STEP_FILE=str(marker)),
            check=True,
            capture_output=True,
        )
        whole.append(time.time() - launched)
        first_step.append(json.loads(marker.read_text())["first_step"] - launched)
    result = {
        "python_s": stats(python),
        "first_step_s": stats(first_step),
        "one_step_run_s": stats(whole),
    }
    for name, values in imports.items():
        result[f"import_{name}_s"] = stats(values)
    print(f"  start-up: first step after {median(first_step):.2f} s", flush=True)
    return result


# ------------------------------------------------------------------------------------------ table


def fmt(row: dict, key: str, spec: str = ",.0f", scale: float = 1.0) -> str:
    s = row[key]
    return f"{s['median'] * scale:{spec}} ({s['min'] * scale:{spec}}–{s['max'] * scale:{spec}})"


def table(results: dict) -> str:
    meta, lines = results["meta"], []
    lines.append(
        f"charrnn bench ({meta['mode']}): torch {meta['torch']}, {meta['threads']} "
        f"threads, {meta['cpu']}; median (min–max) of repeats; sides interleaved"
    )
    if "machine" in results:
        m = results["machine"]
        best = {k: m[k]["max"] for k in ("matmul_gflops", "cache_read_gbps", "memory_read_gbps")}
        lines.append(
            f"machine, best of {m['matmul_gflops']['n']} probes through the run (the limits used "
            f"below): fp32 matmul {best['matmul_gflops']:.0f} GFLOP/s ({m['matmul_size']}² "
            f"torch.mm or oneDNN, median {m['matmul_gflops']['median']:.0f}); reads "
            f"{best['cache_read_gbps']:.0f} GB/s from cache (12.6 MB), "
            f"{best['memory_read_gbps']:.0f} GB/s from memory (256 MB); bf16 matmul "
            + (
                f"{m['bf16_matmul_gflops']['max']:.0f} GFLOP/s"
                if "bf16_matmul_gflops" in m
                else "unsupported (no AVX-512-BF16/AMX)"
            )
        )
    if "train" in results:
        t = results["train"]
        lines.append("")
        lines.append(
            f"Training: Embedding {t['embedding_dim']} → cell {t['rnn_units']} → Linear, "
            f"batch {t['batch_size']}×{t['seq_length']}, Adam (MFU vs the matmul peak)"
        )
        lines.append(
            f"  {'':52} {'chars/s':>22} {'s/step':>7} {'MFU':>5} {'MFU16':>5} "
            f"{'vs pair':>8} {'steal':>6}"
        )
        names = {
            "charrnn_32": "charrnn, precision=32-true",
            "charrnn_impl_torch": "charrnn, precision=32-true, model.impl=torch",
            "charrnn_auto": "charrnn, precision=auto (bf16-mixed here)",
            "loop": "hand-written PyTorch loop, fp32",
            "loop_bf16": "hand-written loop + bf16 autocast",
        }
        for cell in ("gru", "lstm"):
            for name, row in t[cell].items():
                if name == "flops_per_step":
                    continue
                label = f"{cell.upper()}: {names[name]}"
                mfu16 = f"{row['mfu_bf16']['median']:5.0%}" if "mfu_bf16" in row else "    -"
                busy = " *" if row["steal"]["max"] > STEAL_FLAG else ""
                lines.append(
                    f"  {label:52} {fmt(row, 'chars_per_s'):>22} "
                    f"{row['step_s']['median']:7.2f} {row['mfu']['median']:5.0%} {mfu16} "
                    f"{row['speed_vs_loop']['median']:7.2f}× {row['steal']['max']:6.1%}{busy}"
                )
            if t["bf16"] == "unsupported":
                lines.append(
                    f"  {cell.upper()}: bf16 rows: unsupported (no native bf16 on this CPU)"
                )
            else:
                auto = t[cell]["charrnn_auto"]
                lines.append(
                    f"  {cell.upper()}: charrnn auto is {auto['vs_fp32_loop']:.2f}× the fp32 loop "
                    f"(epoch per million chars: {fmt(auto, 'epoch_s_per_million_chars')} s)"
                )
        lines.append(
            "  vs pair: against the loop it ran interleaved with (32-true: fp32 loop; auto: bf16 "
            "loop); MFU vs the fp32 peak, MFU16 vs the bf16 peak; * steal above 5%"
        )
    if "generate" in results:
        g = results["generate"]
        lines.append("")
        lines.append(
            f"Generation: {g['length']} chars after {g['prompt']!r}, same weights, chars/s; "
            "the loop calls plain nn.GRU/nn.LSTM one character at a time (the faster of no_grad and inference_mode); "
            f"precision=auto is {g['default_precision']} here"
        )
        lines.append(
            f"  {'':23} {'Sampler':>22} {'model-call loop':>22} {'ratio':>6} "
            f"{'bound':>7} {'of bound':>8}"
        )
        for cell in ("gru", "lstm"):
            for batch in ("batch1", "batch5"):
                for precision in ("fp32", "bf16", "int8"):
                    row, loop = g[cell][batch][precision], g[cell][batch]
                    lines.append(
                        f"  {cell.upper()} {batch} {precision:12} {fmt(row, 'chars_per_s'):>22} "
                        f"{fmt(loop, 'loop_chars_per_s'):>22} "
                        f"{row['vs_loop']['median']:5.2f}× "
                        f"{row['bound_chars_per_s']:7,.0f} "
                        f"{row['fraction_of_bound']['median']:8.0%}"
                    )
        for precision in ("fp32", "bf16", "int8"):
            lines.append(
                f"  Sampler time of batch 5 / batch 1, {precision}: "
                + ", ".join(
                    f"{cell.upper()} {g[cell][f'batch5_time_vs_batch1_{precision}']['median']:.2f}"
                    for cell in ("gru", "lstm")
                )
            )
        lines.append(
            f"  exported .pt2 time / Sampler time, batch 1, {g['default_precision']}: "
            + ", ".join(
                f"{cell.upper()} {g[cell]['pt2_time_vs_sampler']['median']:.2f}"
                for cell in ("gru", "lstm")
            )
        )
        quality = g.get("quality")
        if quality is None:
            lines.append("  Quality: no trained checkpoint given (--checkpoint), so none reported")
        else:
            fp32 = quality["fp32"]["val_loss"]
            lines.append(
                f"  Quality of {g['quality_of']['checkpoint']}, teacher-forced through the step "
                f"over the first {quality['fp32']['val_chars'] + 1:,} val chars:"
            )
            for precision, row in quality.items():
                lines.append(
                    f"    {precision}: loss {row['val_loss']:.5f} nats/char "
                    f"({row['val_loss'] - fp32:+.5f} vs fp32); greedy picks fp32's character "
                    f"at {row['greedy_agreement']:.1%} of {g['length']:,} positions, the same "
                    f"text for {row['greedy_same_prefix']:,}"
                )
    if "scale" in results:
        lines += ["", *scale.table(results["scale"])]
    if "startup" in results:
        s = results["startup"]
        lines.append("")
        lines.append(
            f"Start-up: `python src/train.py size=tiny` to its first training step: "
            f"{fmt(s, 'first_step_s', '.2f')} s "
            f"(the whole one-step run: {fmt(s, 'one_step_run_s', '.2f')} s)"
        )
        imports = ", ".join(
            f"{key[7:-2]} {fmt(s, key, '.2f')}" for key in s if key.startswith("import_")
        )
        lines.append(
            f"  python starts and exits in {s['python_s']['median']:.2f} s; imports, s: {imports}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def corpus_file(given: str | None) -> Path:
    """The real corpus: --corpus, else the verified download conf/data/shakespeare.yaml names."""
    if given:
        return Path(given)
    from omegaconf import OmegaConf

    from charrnn.corpus import locate_corpus

    data = OmegaConf.load(ROOT / "conf" / "data" / "shakespeare.yaml")
    (path,) = locate_corpus(None, str(ROOT / data.cache_dir), data.url, data.sha256)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run, < 3 minutes")
    parser.add_argument("--smoke", action="store_true", help="seconds, tiny model (for tests)")
    parser.add_argument("--corpus", help="text to train on (default: the Shakespeare download)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections of {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--checkpoint",
        help="a checkpoint trained on --corpus (a .ckpt, or last / best under outputs/): "
        "generation quality per precision on the corpus' val split",
    )
    parser.add_argument("--hand-loop", help=argparse.SUPPRESS)  # internal: HandLoopProcess
    args = parser.parse_args(argv)
    if args.hand_loop:
        return hand_loop_worker(args.hand_loop)
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = PLANS[mode]
    started = time.perf_counter()
    meta = {
        "mode": mode,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_flags": {  # what torch's cpuinfo reports, for the matrix paths that matter here
            k: v
            for k, v in torch.cpu.get_capabilities().items()
            if k in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
        },
        "python": platform.python_version(),
        "numpy": np.__version__,
        "plan": asdict(plan),
    }
    results, stolen_from = {"meta": meta}, steal_now()
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        workdir = Path(tmp)
        if args.smoke and not args.corpus:
            corpus = workdir / "smoke.txt"
            corpus.write_text(scale.synthetic_text(60_000), encoding="utf-8")
        else:
            corpus = corpus_file(args.corpus)
        if {"machine", "train", "generate"} & set(sections):
            machine = Machine(plan, args.smoke)
        if "train" in sections:
            results["train"] = train_section(plan, corpus, workdir, machine)
        if "generate" in sections:
            results["generate"] = generate_section(plan, machine, args.checkpoint, corpus)
        if {"machine", "train", "generate"} & set(sections):
            results["machine"] = machine.results()
        if "scale" in sections:
            results["scale"] = scale_section(plan, workdir, args.smoke)
        if "startup" in sections:
            results["startup"] = startup_section(plan, corpus, workdir)
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["steal"] = steal_since(stolen_from)  # the hypervisor's share over the run
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print()
    print(table(results))
    stolen = results["meta"]["steal"]
    busy = " (above 5%: a busy host, figures are low)" if stolen > STEAL_FLAG else ""
    print(f"\n{results['meta']['seconds']:.0f} s, steal {stolen:.1%}{busy}; results in {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CharRNNError as err:  # e.g. the download cannot be reached: one line, no traceback
        exit_with(err)

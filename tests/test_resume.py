"""Never lose a run: SIGKILL + resume=last matches an uninterrupted run, Ctrl-C/SIGTERM stop after
writing last.ckpt, numerical faults stop before a checkpoint is spoiled, saves are atomic."""

from __future__ import annotations

import glob
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, finish, make_text, start_cli, train_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charrnn.data import CharDataModule
from charrnn.errors import CharRNNError
from charrnn.run.checkpoints import read_checkpoint
from charrnn.run.guards import AtomicCheckpointIO
from charrnn.run.resume import merge_overrides, resume_argv
from charrnn.run.train import train

STEPS_PER_EPOCH = 16  # make_text(6000): 5400 train chars -> 269 windows of 20 -> 16 batches of 16
QUIET = (
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.sample_text.length=20",
    "trainer.log_every_n_steps=1",
)


def one_run(cwd: Path) -> Path:
    (run,) = glob.glob(str(cwd / "outputs" / "runs" / "*"))
    return Path(run)


def wait_for_checkpoint(proc: subprocess.Popen, cwd: Path, ok=lambda step: True) -> int:
    """Polls the run's last.ckpt until its step satisfies `ok`; returns that step."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, finish(proc)
        found = glob.glob(str(cwd / "outputs" / "runs" / "*" / "checkpoints" / "last.ckpt"))
        if found:
            step = read_checkpoint(found[0])["global_step"]  # atomic saves: always complete
            if ok(step):
                return step
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared in time")


def scalars(run: Path, tag: str) -> list[list[tuple[int, float]]]:
    """(step, value) of `tag` per TensorBoard event file of the run, oldest file first."""
    files = sorted(
        glob.glob(str(run / "tensorboard" / "events.out.tfevents.*")), key=os.path.getmtime
    )
    out = []
    for f in files:
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        out.append(
            [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
        )
    return out


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(make_text(6000), encoding="utf-8")
    return path


def test_sigkill_then_resume_last_matches_an_uninterrupted_run(small_corpus, tmp_path):
    """Dropout on, so the restored random state matters too."""
    args = [
        *TINY,
        *QUIET,
        f"data.path={small_corpus}",
        "trainer.max_epochs=3",
        "model.emb_dropout=0.1",
        "model.out_dropout=0.1",
        "callbacks.last_checkpoint.every_n_train_steps=5",
    ]
    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    straight = start_cli("train.py", *args, cwd=tmp_path / "straight")
    killed = start_cli("train.py", *args, cwd=tmp_path / "killed")
    # kill as soon as a mid-epoch checkpoint (step 20, 25, 30 ...: epochs are 16 steps) exists
    step = wait_for_checkpoint(
        killed, tmp_path / "killed", ok=lambda s: s >= 18 and s % STEPS_PER_EPOCH
    )
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    assert killed.returncode == -signal.SIGKILL
    run = one_run(tmp_path / "killed")
    on_disk = read_checkpoint(run / "checkpoints" / "last.ckpt")  # intact and loadable
    resumed_from = on_disk["global_step"]
    assert resumed_from >= step

    resumed = start_cli("train.py", "resume=last", cwd=tmp_path / "killed")
    out = finish(resumed)
    assert resumed.returncode == 0, (resumed_from, out[-3000:])
    assert f"Restoring states from the checkpoint path at {run}" in out
    assert one_run(tmp_path / "killed") == run  # no new run dir: it continued in place
    out_straight = finish(straight)
    assert straight.returncode == 0, out_straight[-3000:]

    # the configured number of epochs and steps, no more
    final = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (2, 3 * STEPS_PER_EPOCH)
    assert not list((run / "checkpoints").glob(".*.part"))  # a killed save's temp file is gone

    # one TensorBoard run whose train/loss continues where the checkpoint was
    before, after = scalars(run, "train/loss")
    # Lightning logs step s-1 just after the step-s checkpoint is written: a kill in between
    # loses that one point, so the killed run's file ends at s-1 or, at worst, s-2
    assert before[0][0] == 0 and before[-1][0] >= resumed_from - 2, (resumed_from, before)
    assert [s for s, _ in after] == list(range(resumed_from, 3 * STEPS_PER_EPOCH)), resumed_from
    assert [s for s, _ in scalars(run, "val/loss")[1]][-1] == 3 * STEPS_PER_EPOCH - 1

    # same seed: the resumed run ends exactly where the uninterrupted one does
    reference = read_checkpoint(one_run(tmp_path / "straight") / "checkpoints" / "last.ckpt")
    assert math.isfinite(final["best_val_loss"]) and final["best_val_loss"] < math.log(48)
    assert abs(final["best_val_loss"] - reference["best_val_loss"]) <= 1e-6
    for name, tensor in reference["state_dict"].items():
        assert torch.allclose(final["state_dict"][name], tensor, atol=1e-6), name
    straight_val = scalars(one_run(tmp_path / "straight"), "val/loss")[0][-1][1]
    resumed_val = scalars(run, "val/loss")[-1][-1][1]
    assert abs(straight_val - resumed_val) <= 1e-6


def test_stateful_training_resumes_mid_epoch_exactly(small_corpus, tmp_path, monkeypatch):
    """Truncated BPTT carries the hidden state across batches: it is saved with the checkpoint,
    so a crash at step 22 and a resume from the step-20 checkpoint end like a straight run."""
    from charrnn.model import CharLM

    args = (
        *TINY,
        *QUIET,
        f"data.path={small_corpus}",
        "data=stateful",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=4",
    )
    straight = train(train_config(tmp_path / "straight", *args), tmp_path / "straight")

    real_step = CharLM.training_step

    def crash_at_22(self, batch, batch_idx):
        if self.trainer.global_step == 21:
            raise RuntimeError("simulated crash")
        return real_step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(CharLM, "training_step", crash_at_22)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(train_config(tmp_path / "crashed", *args), tmp_path / "crashed")
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)
    assert saved["global_step"] == 20 and saved["train_hidden"].shape == (1, 16, 32)
    resumed = train(
        train_config(tmp_path / "crashed", *args, f"ckpt_path={last}"), tmp_path / "crashed"
    )
    assert resumed == straight  # bit for bit
    assert read_checkpoint(last)["global_step"] == 2 * 17  # 5400 chars / 16 rows / 20 = 17 batches


def test_resume_at_an_epoch_end_keeps_the_plateau_schedule(small_corpus, tmp_path):
    """last.ckpt of a finished 1-epoch run, continued to 3 epochs, ends like a straight 3-epoch
    run, learning-rate halvings included (threshold 0.9: every epoch after the first is 'worse')."""
    args = (
        *TINY,
        *QUIET,
        f"data.path={small_corpus}",
        "scheduler=plateau",
        "+scheduler.scheduler.threshold=0.9",
    )
    straight = train(
        train_config(tmp_path / "straight", *args, "trainer.max_epochs=3"), tmp_path / "straight"
    )
    train(train_config(tmp_path / "resumed", *args, "trainer.max_epochs=1"), tmp_path / "resumed")
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    resumed = train(
        train_config(tmp_path / "resumed", *args, "trainer.max_epochs=3", f"ckpt_path={last}"),
        tmp_path / "resumed",
    )
    assert resumed == straight
    a, b = (
        read_checkpoint(d / "checkpoints" / "last.ckpt")
        for d in (tmp_path / "straight", tmp_path / "resumed")
    )
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == 5e-4  # halved once so far
    assert b["optimizer_states"][0]["param_groups"][0]["lr"] == 5e-4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_after_writing_last_ckpt(signum, small_corpus, tmp_path):
    proc = start_cli(
        "train.py",
        *TINY,
        *QUIET,
        f"data.path={small_corpus}",
        "trainer.max_epochs=50",
        "callbacks.last_checkpoint.every_n_train_steps=1000",
        cwd=tmp_path,
    )
    # last.ckpt is first written at the end of epoch 0 (step 16), after that epoch's last check
    # for a signal: one sent once it exists is acted on at the end of a batch of epoch 1
    wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signum)
    out = finish(proc)
    assert proc.returncode == 128 + signum, out[-3000:]
    assert "Traceback" not in out
    (line,) = [line for line in out.splitlines() if f"stopped by {signum.name}" in line]
    step = int(line.split("after step ")[1].split(";")[0])
    run = one_run(tmp_path)
    saved = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == step > STEPS_PER_EPOCH  # written at the stop, mid-epoch 1
    assert f"resume={run}" in line


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    small_corpus, tmp_path, monkeypatch
):
    """A loss that turns nan at step 8: one-line error naming step 8 and a remedy; last.ckpt
    stays the finite step-5 checkpoint."""
    from charrnn.model import CharLM

    real_step = CharLM.training_step

    def poisoned(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 7 else loss

    monkeypatch.setattr(CharLM, "training_step", poisoned)
    cfg = train_config(
        tmp_path,
        *TINY,
        *QUIET,
        f"data.path={small_corpus}",
        "callbacks.last_checkpoint.every_n_train_steps=5",
    )
    with pytest.raises(CharRNNError) as err:
        train(cfg, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "train/loss is nan at step 8" in message and "optimizer.lr" in message
    assert "gradient_clip_val" in message and "step 5) is kept" in message
    kept = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert kept["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())


def test_weights_made_non_finite_by_the_optimiser_are_never_saved(small_corpus, tmp_path):
    """Adam with eps=0 divides 0 by 0 on its first step: stopped at step 1, no checkpoint."""
    proc = start_cli(
        "train.py",
        *TINY,
        *QUIET,
        f"data.path={small_corpus}",
        "+optimizer.eps=0",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        cwd=tmp_path,
    )
    out = finish(proc)
    assert proc.returncode == 1 and "Traceback" not in out
    (line,) = [line for line in out.splitlines() if "error: " in line]
    assert "made the weights non-finite at step 1" in line and "optimizer.lr" in line
    assert not list((one_run(tmp_path) / "checkpoints").glob("*.ckpt"))


@pytest.fixture(scope="module")
def finished_run(small_corpus, tmp_path_factory) -> Path:
    """A completed 2-epoch run, in its own working directory."""
    cwd = tmp_path_factory.mktemp("finished")
    proc = start_cli(
        "train.py", *TINY, *QUIET, f"data.path={small_corpus}", "trainer.max_epochs=2", cwd=cwd
    )
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    return one_run(cwd)


def _snapshot(run: Path) -> dict:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.log"}


def assert_unchanged(before: dict) -> None:
    """Every file is still there with the same bytes (a failed attempt may only add files: its
    Hydra record under .hydra/resume-<time>/, a TensorBoard event file; train.log is appended)."""
    for path, content in before.items():
        assert path.read_bytes() == content, path


def test_resume_with_an_absurd_lr_stops_and_changes_no_file(finished_run):
    """The lr given on resume is applied (Lightning alone would restore the saved one); this one
    overflows in the first step: a one-line error, and every file of the run is as it was."""
    before = _snapshot(finished_run)
    proc = start_cli(
        "train.py",
        f"resume={finished_run}",
        "trainer.max_epochs=3",
        "optimizer.lr=1e38",
        cwd=finished_run.parents[2],
    )
    out = finish(proc)
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    (line,) = [line for line in out.splitlines() if "error: " in line]
    assert "training stopped" in line and "optimizer.lr (now 1e+38" in line
    assert_unchanged(before)


def test_resume_on_another_alphabet_is_refused_and_changes_no_file(finished_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(make_text(6000).replace("?", "¿"), encoding="utf-8")
    before = _snapshot(finished_run)
    proc = start_cli(
        "train.py",
        f"resume={finished_run}",
        f"data.path={other}",
        "trainer.max_epochs=3",
        cwd=finished_run.parents[2],
    )
    out = finish(proc)
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    (line,) = [line for line in out.splitlines() if "error: " in line]
    assert "another alphabet" in line
    assert "only in the corpus: '¿'" in line and "only in the checkpoint: '?'" in line
    assert_unchanged(before)


# ----------------------------------------------------------------------------- units, in process


def test_resume_argv_replays_the_runs_overrides(finished_run):
    argv = resume_argv(
        ["train.py", "resume=last", "trainer.max_epochs=4"], outputs=finished_run.parents[1]
    )
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    assert "size=tiny" in argv and "trainer.max_epochs=4" in argv
    assert "trainer.max_epochs=2" not in argv  # replaced by the new value
    assert f"ckpt_path={ckpt}" in argv and f"hydra.run.dir={finished_run}" in argv
    assert any(a.startswith("hydra.output_subdir=.hydra/resume-") for a in argv)
    assert resume_argv(["train.py", "size=tiny"]) == ["train.py", "size=tiny"]
    with pytest.raises(CharRNNError, match="drop -m"):
        resume_argv(["train.py", "-m", "resume=last"], outputs=finished_run.parents[1])
    with pytest.raises(CharRNNError, match="not both"):
        resume_argv(["train.py", "resume=last", f"ckpt_path={ckpt}"])


def test_merge_overrides_later_keys_win():
    assert merge_overrides(["a=1", "b=2", "+c=3"], ["b=5", "++c=4", "-m"]) == [
        "a=1",
        "b=5",
        "++c=4",
        "-m",
    ]


@pytest.mark.parametrize("stateful", [False, True])
def test_train_loader_resumes_mid_epoch_with_the_same_batches(small_corpus, stateful):
    def loader():
        dm = CharDataModule(
            path=str(small_corpus), seq_length=20, batch_size=16, seed=7, stateful=stateful
        )
        dm.setup("fit")
        return dm.train_dataloader()

    first = loader()
    first.sampler.set_epoch(3)
    batches = list(first)
    assert first.state_dict() == {"epoch": 3, "batches_done": len(batches)}
    again = loader()
    again.load_state_dict({"epoch": 3, "batches_done": 5})
    again.sampler.set_epoch(3)
    rest = list(again)
    assert len(rest) == len(batches) - 5 and len(again) == len(batches)
    for (x, y), (x2, y2) in zip(batches[5:], rest, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    again.sampler.set_epoch(4)  # the skip applies to the checkpoint's epoch only
    assert len(list(again)) == len(batches)


def test_a_kill_in_the_middle_of_a_save_leaves_the_old_file(tmp_path):
    """A process that has written half of a new checkpoint's temp file is SIGKILLed: last.ckpt is
    still the old, complete file; the next save clears the temp file the kill left behind."""
    script = (
        "import io, sys, torch\n"
        "from charrnn.run.guards import AtomicCheckpointIO\n"
        "def ckpt(i):\n"
        "    return {'state_dict': {'w': torch.full((1 << 16,), float(i))},"
        " 'hyper_parameters': {'vocab': 'ab'}, 'i': i}\n"
        "saver = AtomicCheckpointIO()\n"
        "saver.save_checkpoint(ckpt(1), sys.argv[1])\n"
        "real_save = torch.save\n"
        "def half_then_wait(obj, f):\n"
        "    buffer = io.BytesIO()\n"
        "    real_save(obj, buffer)\n"
        "    f.write(buffer.getvalue()[: buffer.tell() // 2])\n"
        "    f.flush()\n"
        "    print('inside the write', flush=True)\n"
        "    sys.stdin.read()  # until the parent kills us\n"
        "torch.save = half_then_wait\n"
        "saver.save_checkpoint(ckpt(2), sys.argv[1])\n"
    )
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "inside the write\n"
        (part,) = tmp_path.glob(".last.ckpt.*.part")  # write_atomically's temp file, half-full
        assert 0 < part.stat().st_size < path.stat().st_size
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    loaded = read_checkpoint(path, ours=False)
    assert loaded["i"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.full((1 << 16,), 1.0))
    assert part.exists()  # nothing ran after the kill
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "i": 3}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert read_checkpoint(path, ours=False)["i"] == 3


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {}, "hyper_parameters": {"vocab": "ab"}, "i": 1}, path)

    def broken(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {}, "hyper_parameters": {"vocab": "ab"}, "i": 2}, path)
    assert read_checkpoint(path, ours=False)["i"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

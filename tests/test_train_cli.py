"""End to end: the real `python src/train.py` in a subprocess, checked by what a user looks at."""

from pathlib import Path

import torch
from conftest import TINY, make_text, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}
    )
    events.Reload()
    return events


def test_train_cli_writes_checkpoints_scalars_and_one_sample_per_epoch(tmp_path: Path):
    corpus = tmp_path / "play.txt"
    corpus.write_text(make_text(12_000))
    result = run_cli("train.py", f"data.path={corpus}", *TINY, "trainer.max_epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert f"corpus {corpus}: 1 file(s), " in (run_dir / "train.log").read_text()

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    best = next(n for n in checkpoints if n != "last.ckpt")
    assert best.startswith("epoch") and "val_loss" in best

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["vocab"] == "".join(sorted(set(corpus.read_text())))
    assert ckpt["epoch"] == 1

    events = _events(run_dir)
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/bpc", "val/loss_best"} <= scalars
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) == 2 and val[1] < val[0]
    bpc = events.Scalars("val/bpc")[-1].value
    assert abs(bpc - val[-1] / 0.6931471805599453) < 1e-4
    samples = events.Tensors("sample/text_summary")
    assert len(samples) == 2  # one per epoch
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert text.startswith("    ROMEO:")  # indented: shown verbatim, not as Markdown

    out = result.stdout + result.stderr
    assert "sample after epoch 1" in out and "best val/loss" in out
    assert f"tensorboard --logdir {run_dir}" in out and f"src/train.py resume={run_dir}" in out

"""trainer=ddp: two real CPU processes (gloo) train one model; rank 0 alone samples and saves."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from conftest import TINY, make_text, run_cli

from charrnn.data import CharDataModule
from charrnn.model import CharLM


def test_ddp_trains_on_two_processes_and_rank_zero_writes_one_best_checkpoint(tmp_path: Path):
    corpus = tmp_path / "play.txt"
    corpus.write_text(make_text(12_000), encoding="utf-8")
    run_dir = tmp_path / "run"
    result = run_cli(
        "train.py",
        "trainer=ddp",
        f"data.path={corpus}",
        *TINY,
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "callbacks.sample_text.length=20",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log  # two processes joined the group
    assert "distributed_backend=gloo" in log
    assert log.count("sample after epoch 0") == 1  # sampling on rank 0 only

    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt" and names[0].startswith("epoch000")
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["best_checkpoint"] == str(run_dir / "checkpoints" / names[0])

    # each rank took every other batch of our own sampler: half an epoch's batches each (with
    # Lightning's DistributedSampler wrapped around ours it would be a quarter)
    data = CharDataModule(path=str(corpus), seq_length=20, batch_size=16, val_streams=4)
    data.setup("fit")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == len(data.train_windows) // 16 // 2

    # val/loss is the sum over both ranks' streams: one process reading all 2 x 4 streams agrees
    best = torch.load(Path(record["best_checkpoint"]), weights_only=True, map_location="cpu")
    module = CharLM(**best["hyper_parameters"])
    module.load_state_dict(best["state_dict"])
    whole = CharDataModule(path=str(corpus), seq_length=20, batch_size=16, val_streams=8)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    metrics = trainer.validate(module, datamodule=whole, verbose=False)[0]
    assert abs(metrics["val/loss"] - record["val_loss_best"]) < 1e-5

"""A whole fit in-process from the composed config: seeding and the returned metric."""

from pathlib import Path

from conftest import TINY, make_text, train_config

from charrnn.run.train import train


def _fit(run_dir: Path, corpus: Path, seed: int) -> float:
    cfg = train_config(
        run_dir,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_epochs=1",
        f"seed={seed}",
        "callbacks.progress_bar=null",
        "callbacks.sample_text.length=20",
    )
    return train(cfg, run_dir)


def test_same_seed_gives_the_same_losses_and_train_returns_val_loss_best(tmp_path: Path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(make_text(6000), encoding="utf-8")  # 16 steps an epoch
    first = _fit(tmp_path / "a", corpus, seed=7)
    again = _fit(tmp_path / "b", corpus, seed=7)
    other = _fit(tmp_path / "c", corpus, seed=8)
    assert first == again
    assert other != first
    assert 0 < first < 4.0, (first, again, other)


def test_ema_validates_and_saves_the_averaged_weights(tmp_path: Path):
    import hydra
    import lightning as L
    import torch

    from charrnn.model import CharLM
    from charrnn.run.checkpoints import read_checkpoint

    corpus = tmp_path / "small.txt"
    corpus.write_text(make_text(6000), encoding="utf-8")
    run_dir = tmp_path / "run"
    cfg = train_config(
        run_dir,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_epochs=2",
        "callbacks=ema",
        "callbacks.ema.decay=0.9",
        "trainer.precision=32-true",
        "callbacks.progress_bar=null",
        "callbacks.sample_text.length=20",
    )
    best = train(cfg, run_dir)
    (path,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    ckpt = read_checkpoint(path)
    averaged, trained = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert not all(torch.equal(averaged[k], trained[k]) for k in averaged)
    # validation scored the averaged weights: they alone give the logged best val/loss again
    module = CharLM(**ckpt["hyper_parameters"])
    datamodule = hydra.utils.instantiate(cfg.data)
    for weights, same in ((averaged, True), (trained, False)):
        module.load_state_dict(weights)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        loss = float(trainer.callback_metrics["val/loss"])
        assert (abs(loss - best) < 1e-5) == same, (loss, best)

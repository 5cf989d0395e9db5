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

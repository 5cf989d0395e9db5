"""Training recipes: stateful TBPTT in the module, schedules, dropout and early stopping configs."""

from pathlib import Path

import pytest
import torch
from conftest import TINY, train_config
from lightning.pytorch.callbacks import Timer

from charrnn.model import CharLM
from charrnn.run.train import build
from charrnn.schedules import WarmupCosine

VOCAB = "abcdefgh"
OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}


def test_stateful_module_carries_detached_hidden_and_resets_each_epoch():
    torch.manual_seed(0)
    module = CharLM(
        VOCAB, {"cell": "lstm", "embedding_dim": 4, "rnn_units": 8}, OPTIMIZER, stateful=True
    )
    seen = []
    forward = module.net.forward
    module.net.forward = lambda ids, hidden=None: (seen.append(hidden), forward(ids, hidden))[1]
    module.log = lambda *args, **kwargs: None
    batch = (torch.randint(0, 8, (3, 5)), torch.randint(0, 8, (3, 5)))
    module.on_train_epoch_start()
    module.training_step(batch, 0)
    carried = module._train_hidden
    assert all(not h.requires_grad for h in carried)
    module.training_step(batch, 1)
    assert seen[0] is None and seen[1] is carried  # batch k+1 starts from batch k's final state
    module.on_train_epoch_start()
    module.training_step(batch, 0)
    assert seen[2] is None  # a new epoch starts from zeros


def test_stateless_module_starts_every_batch_from_zeros():
    module = CharLM(VOCAB, {"cell": "gru", "embedding_dim": 4, "rnn_units": 8}, OPTIMIZER)
    module.log = lambda *args, **kwargs: None
    batch = (torch.randint(0, 8, (3, 5)), torch.randint(0, 8, (3, 5)))
    module.training_step(batch, 0)
    assert module._train_hidden is None


def test_warmup_cosine_follows_the_step_or_time_horizon():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = WarmupCosine(optimizer, warmup_steps=4, min_lr_ratio=0.1, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        optimizer.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False)) and lrs[-1] == pytest.approx(
        0.1, abs=0.01
    )
    used = [0.0]
    timed = WarmupCosine(torch.optim.SGD([param], lr=1.0), 0, 0.1, time_fraction=lambda: used[0])
    used[0] = 1.0  # the whole time budget is spent: the schedule is at its floor
    assert timed.factor() == pytest.approx(0.1)
    assert "time_fraction" not in timed.state_dict()  # checkpoints hold no functions


def test_recipe_configs_change_what_they_should(tmp_path: Path, corpus: Path):
    cfg = train_config(
        tmp_path,
        *TINY,
        f"data.path={corpus}",
        "model.emb_dropout=0.2",
        "model.out_dropout=0.3",
        "model.num_layers=2",
        "model.dropout=0.1",
        "scheduler=cosine",
        "optimizer=adamw",
        "callbacks=early_stopping",
        "data=stateful",
    )
    _, module, trainer = build(cfg)
    net = module.net
    assert (net.emb_dropout, net.out_dropout, net.rnn.dropout) == (0.2, 0.3, 0.1)
    assert module.hparams.stateful is True
    assert any(type(c).__name__ == "EarlyStopping" for c in trainer.callbacks)
    module.trainer = trainer
    config = module.configure_optimizers()
    assert type(config["optimizer"]).__name__ == "AdamW"
    assert config["optimizer"].param_groups[0]["weight_decay"] == 0.1
    assert isinstance(config["lr_scheduler"]["scheduler"], WarmupCosine)
    assert config["lr_scheduler"]["interval"] == "step"


def test_best_cpu_recipes_time_budget_drives_the_cosine_schedule(tmp_path: Path, corpus: Path):
    """experiment=best_cpu (shrunk): the Trainer's one-hour max_time, not a step count, moves the
    learning rate: half the budget used is half the cosine, all of it the floor (5% of lr)."""
    cfg = train_config(
        tmp_path,
        "experiment=best_cpu",
        f"data.path={corpus}",
        *TINY,  # size=tiny is overridden by the recipe's size; shrink the model by key
        "model.embedding_dim=16",
        "model.rnn_units=32",
        "model.num_layers=1",
    )
    _, module, trainer = build(cfg)
    assert (module.net.cell, module.net.weight_drop, module.net.locked) == ("lstm", 0.4, True)
    module.trainer = trainer
    config = module.configure_optimizers()
    schedule, optimizer = config["lr_scheduler"]["scheduler"], config["optimizer"]
    assert isinstance(schedule, WarmupCosine) and config["lr_scheduler"]["interval"] == "step"
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    schedule.last_epoch = schedule.warmup_steps  # past the warm-up, a handful of steps in
    assert schedule.progress() == 0.0 and schedule.factor() == pytest.approx(1.0)
    for used, factor in ((1800.0, 0.05 + 0.95 * 0.5), (3600.0, 0.05)):
        timer.load_state_dict({"time_elapsed": {"train": used}})  # as a resumed run's clock
        assert schedule.progress() == pytest.approx(used / 3600)
        optimizer.step()
        schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr * factor, rel=1e-3)

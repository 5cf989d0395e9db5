"""generate.py: finding and loading checkpoints, the CLI end to end, and its one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from omegaconf import OmegaConf

from charrnn.errors import CharRNNError
from charrnn.net import CharRNN
from charrnn.run.checkpoints import load, resolve
from charrnn.run.generate import generate
from charrnn.sampling import Sampler, clean_prompt, resolve_precision, seed_generator

RUN = Path("outputs/runs/2000-01-01_00-00-00-000000/checkpoints")


def _checkpoints(root: Path) -> tuple[Path, Path]:
    folder = root / RUN
    best = next(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    return folder / "last.ckpt", best


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_last_and_best_resolve_to_the_newest_run(tmp_path):
    outputs = tmp_path / "outputs"
    with pytest.raises(CharRNNError, match="train first"):
        resolve("last", outputs)
    old = outputs / "runs/2001-01-01_00-00-00-000000/checkpoints"
    _touch(old / "last.ckpt", 1000)
    _touch(old / "epoch002-val_loss2.5000.ckpt", 1000)
    sweep = outputs / "multirun/2002-01-01_00-00-00-000000/0_model.rnn_units=32/checkpoints"
    _touch(sweep / "epoch000-val_loss2.9000.ckpt", 2000)
    _touch(sweep / "epoch001-val_loss2.7000.ckpt", 2001)
    _touch(sweep / "last.ckpt", 2002)
    (outputs / "runs/2003-01-01_00-00-00-000000").mkdir(parents=True)  # crashed before saving

    assert resolve("last", outputs) == sweep / "last.ckpt"
    assert resolve("best", outputs) == sweep / "epoch001-val_loss2.7000.ckpt"
    _touch(old / "last.ckpt", 3000)  # the old run was resumed: now it is the newest
    assert resolve("last", outputs) == old / "last.ckpt"
    assert resolve("best", outputs) == old / "epoch002-val_loss2.5000.ckpt"
    assert resolve(str(sweep / "last.ckpt"), outputs) == sweep / "last.ckpt"
    assert resolve(str(sweep.parent), outputs) == sweep / "last.ckpt"  # a run dir: its last.ckpt

    (old / "last.ckpt").unlink()
    _touch(old / "epoch003-val_loss2.4000.ckpt", 4000)
    with pytest.raises(CharRNNError, match="has no last checkpoint"):
        resolve("last", outputs)
    with pytest.raises(CharRNNError, match="has no checkpoints/last.ckpt"):
        resolve(str(old.parent), outputs)
    with pytest.raises(CharRNNError, match="does not exist"):
        load(resolve(str(tmp_path / "nope.ckpt"), outputs))


def test_load_rebuilds_the_trained_network_and_vocabulary(trained_run):
    last, best = _checkpoints(trained_run)
    raw = torch.load(last, map_location="cpu", weights_only=True)
    trained = load(last)
    assert isinstance(trained.net, CharRNN) and not trained.net.training
    assert trained.vocab.chars == raw["hyper_parameters"]["vocab"]
    weights = trained.net.state_dict()
    assert set(weights) == {k[4:] for k in raw["state_dict"] if k.startswith("net.")}
    for name, tensor in weights.items():
        assert torch.equal(tensor, raw["state_dict"][f"net.{name}"])
    assert resolve("last", trained_run / "outputs") == last
    assert resolve("best", trained_run / "outputs") == best


class NotAllowed:
    """A class a weights-only load must refuse to instantiate."""


def _damage(kind: str, good: Path, path: Path) -> None:
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "pickled object":
        torch.save({"hyper_parameters": NotAllowed(), "state_dict": {}}, path)
    elif kind == "not charrnn":
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    elif kind == "wrong shapes":
        ckpt = torch.load(good, map_location="cpu", weights_only=True)
        ckpt["hyper_parameters"]["model"]["rnn_units"] += 1
        torch.save(ckpt, path)


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("truncated", "is truncated or damaged"),
        ("empty", "is an empty file"),
        ("text", "is not a PyTorch checkpoint"),
        ("pickled object", "contains a pickled Python object"),
        ("not charrnn", "not a charrnn checkpoint"),
        ("wrong shapes", "size mismatch for rnn.weight_hh_l0"),
    ],
)
def test_bad_checkpoints_give_one_line_errors(trained_run, tmp_path, kind, needle):
    path = tmp_path / "bad.ckpt"
    _damage(kind, _checkpoints(trained_run)[0], path)
    with pytest.raises(CharRNNError) as err:
        load(resolve(str(path)))
    message = str(err.value)
    assert needle in message and str(path) in message
    assert "\n" not in message


def test_cli_streams_one_sample_and_writes_out(trained_run, tmp_path):
    out = tmp_path / "samples" / "one.txt"
    result = run_cli(
        "generate.py",
        "ckpt=last",
        "length=80",
        "seed=3",
        "temperature=0.8",
        f"out={out}",
        cwd=trained_run,
    )
    assert result.returncode == 0, result.stderr
    trained = load(_checkpoints(trained_run)[0])
    auto = resolve_precision("auto")  # the default
    (text,) = Sampler(trained.net, trained.vocab, precision=auto).generate(
        "ROMEO:", 80, 0.8, 0, 1, seed_generator(3)
    )
    assert result.stdout == "ROMEO:" + text + "\n"  # the same seed gives the same text
    assert out.read_text(encoding="utf-8") == result.stdout
    assert "last.ckpt" in result.stderr and "seed=3" in result.stderr
    assert f"{auto} weights" in result.stderr


def test_cli_batch_prints_each_sample_under_a_header(trained_run):
    result = run_cli(
        "generate.py",
        "ckpt=best",
        "length=40",
        "num_samples=3",
        "top_k=4",
        "prompt='ROMEO€:'",
        "unknown_chars=replace",
        "replace_with=' '",
        cwd=trained_run,
    )
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("===== sample ")[1:]
    assert [b.split(" =====\n")[0] for b in blocks] == ["1/3", "2/3", "3/3"]
    samples = [b.split(" =====\n", 1)[1][:-1] for b in blocks]
    assert all(s.startswith("ROMEO :") and len(s) == 7 + 40 for s in samples)
    assert len(set(samples)) > 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["temperature=-1"], "temperature"),
        (["prompt='Zebra€'"], "'€'"),
        (["ckpt=missing.ckpt"], "missing.ckpt does not exist"),
        (["ckpt=corpus.txt"], "is not a PyTorch checkpoint"),
    ],
)
def test_cli_bad_input_exits_1_with_one_line(trained_run, args, needle):
    result = run_cli("generate.py", *args, cwd=trained_run)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("length", 0, "length: 0"),
        ("length", "many", "length: 'many'"),
        ("top_k", 1000, "vocabulary size"),
        ("num_samples", 0, "num_samples: 0"),
        ("unknown_chars", "keep", "choose one of error, drop, replace"),
        ("prompt", "", "prompt"),
        ("device", "gpu7", "device"),
        ("precision", "fp16", "precision: 'fp16' is not allowed for cpu; choose one of auto"),
    ],
)
def test_bad_options_are_named_in_the_error(trained_run, key, value, needle):
    cfg = OmegaConf.load(ROOT / "conf" / "generate.yaml")
    cfg.runs_dir = str(trained_run / "outputs")
    cfg[key] = value
    with pytest.raises(CharRNNError, match=re.escape(needle)) as err:
        generate(cfg)
    assert "\n" not in str(err.value)


def test_unknown_prompt_characters_can_be_dropped_or_replaced(trained_run):
    vocab = load(_checkpoints(trained_run)[0]).vocab
    assert clean_prompt("RO€MEO¿:", vocab, "drop", " ") == "ROMEO:"
    assert clean_prompt("RO€MEO¿:", vocab, "replace", " ") == "RO MEO :"
    with pytest.raises(CharRNNError, match="'€', '¿'"):
        clean_prompt("RO€MEO¿:", vocab, "error", " ")
    with pytest.raises(CharRNNError, match="replace_with"):
        clean_prompt("RO€MEO:", vocab, "replace", "€")


def test_generate_and_export_do_not_import_lightning():
    code = (
        "import sys, charrnn.run.generate, charrnn.run.export; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_device_that_is_not_there_is_one_line():
    from charrnn.run.generate import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    for name in ("nonsense", "cuda:7" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(
            CharRNNError, match=rf"^device: '{name}' is not usable here \(.+\); use"
        ):
            pick_device(name)

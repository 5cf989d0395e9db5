"""export.py: one file that generates with only torch, exactly the text generate.py generates."""

import json
import subprocess
import sys

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from charrnn.errors import CharRNNError
from charrnn.run.checkpoints import load, resolve
from charrnn.run.export import export
from charrnn.sampling import Sampler, seed_generator

# Runs in `python -I` (no user site, no cwd on the path) with charrnn hidden even from the
# editable install, so only torch is there. The part after the marker is the README's snippet.
ISOLATED = r"""
import json, sys

class HideCharrnn:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "charrnn":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, HideCharrnn())
try:
    import charrnn  # noqa
    sys.exit("charrnn is importable")
except ModuleNotFoundError:
    pass
path, cases = sys.argv[1], json.loads(sys.argv[2])
# --- README snippet ---
import torch

gen = torch.jit.load(path)  # a TorchScript file: only torch is needed
texts = gen("ROMEO:", length=120, temperature=0.8, top_k=0, num_samples=1, seed=11)

# the same, one chunk of steps at a time (e.g. to stream): same seed, same text
generator = torch.Generator().manual_seed(11)
state, pending = gen.start(gen.encode("ROMEO:"), 1)  # the prompt in one pass
streamed = ""
for done in range(0, 120, 32):
    ids, state = gen.sample(state, pending, min(32, 120 - done), 0.8, 0, [generator])
    pending = ids[:, -1]
    streamed += gen.decode(ids)[0]
# --- end ---
try:
    gen("ROMEO€", 5)
    unknown = ""
except Exception as err:
    unknown = str(err)
print(json.dumps({
    "texts": texts, "streamed": streamed, "vocab": "".join(gen.chars), "unknown": unknown,
    "cases": [gen(*case) for case in cases],
}))
"""

CASES = [("JULIET:", 50, 1.0, 5, 3, 2), ("ROMEO:", 60, 0.0, 0, 2, 0), ("A", 40, 1.7, 0, 1, 99)]


def test_exported_file_generates_what_generate_py_generates(trained_run, tmp_path):
    out = tmp_path / "export" / "generator.pt"
    exported = run_cli("export.py", "ckpt=last", f"out={out}", cwd=trained_run)
    assert exported.returncode == 0, exported.stderr
    assert out.is_file() and str(out) in exported.stderr
    generated = run_cli(
        "generate.py", "ckpt=last", "length=120", "temperature=0.8", "seed=11", cwd=trained_run
    )
    assert generated.returncode == 0, generated.stderr

    isolated = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, str(out), json.dumps(CASES)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert isolated.returncode == 0, isolated.stderr
    got = json.loads(isolated.stdout)

    assert generated.stdout == "ROMEO:" + got["texts"][0] + "\n"
    assert got["streamed"] == got["texts"][0]
    trained = load(resolve("last", trained_run / "outputs"))
    assert got["vocab"] == trained.vocab.chars
    assert "never saw" in got["unknown"]
    sampler = Sampler(trained.net, trained.vocab)
    for case, texts in zip(CASES, got["cases"], strict=True):
        prompt, length, temperature, top_k, rows, seed = case
        expected = sampler.generate(prompt, length, temperature, top_k, rows, seed_generator(seed))
        assert texts == expected
        assert len(texts) == rows and all(len(t) == length for t in texts)


def test_export_errors_leave_the_old_file_alone(trained_run, tmp_path):
    out = tmp_path / "generator.pt"
    out.write_bytes(b"an earlier export")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 100)
    for settings, needle in [
        ({"ckpt": str(bad), "out": str(out)}, "is not a PyTorch checkpoint"),
        ({"ckpt": "last", "out": str(tmp_path / "generator.pt2")}, "ending in .pt"),
        ({"ckpt": str(tmp_path / "none.ckpt"), "out": str(out)}, "does not exist"),
    ]:
        cfg = OmegaConf.create({"runs_dir": str(trained_run / "outputs"), **settings})
        with pytest.raises(CharRNNError, match=needle) as err:
            export(cfg)
        assert "\n" not in str(err.value)
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "generator.pt"]

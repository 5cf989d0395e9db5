"""export.py: one file that generates with only torch (.pt2), exactly the text generate.py generates,
or with only onnxruntime (.onnx), generate.py's greedy text."""

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

# Runs in `python -I` (no user site, no cwd on the path) with charrnn (and for ONNX torch too)
# hidden even from the editable install. The part after the marker is the README's snippet.
HIDE = r"""
import json, sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Hide())
for name in HIDDEN:
    try:
        __import__(name)
        sys.exit(f"{name} is importable")
    except ModuleNotFoundError:
        pass
path, cases = sys.argv[1], json.loads(sys.argv[2])
"""

PT2 = r"""
# --- README snippet ---
import json, torch

extra = {"charrnn.json": ""}
step = torch.export.load(path, extra_files=extra).module(check_guards=False)
step.validate_inputs = False  # one step for every row; our inputs fit, so skip torch's checks
meta = json.loads(extra["charrnn.json"])
chars, known = meta["vocab"], len(meta["vocab"])

def generate(prompt, length, temperature=1.0, top_k=0, rows=1, seed=0):
    gen, kth = torch.Generator().manual_seed(seed), torch.tensor([(top_k or known) - 1])
    ids, state = torch.tensor([chars.index(c) for c in prompt]), [torch.zeros(1, n) for n in meta["state"]]
    for i in ids[:-1]:  # the prompt, on one row
        _, state = step(i[None], torch.zeros(1, known), kth, state)
    state, pending, out = [s.expand(rows, -1).contiguous() for s in state], ids[-1:].expand(rows), []
    for done in range(0, length, 32):  # Gumbel-max noise, drawn per chunk of 32 steps
        u = torch.rand([min(32, length - done), rows, known], generator=gen)
        noise = u.log().neg().log().neg() * temperature if temperature else u * 0
        for t in range(len(u)):
            pending, state = step(pending, noise[t], kth, state)
            out.append(pending)
    return ["".join(chars[i] for i in row) for row in torch.stack(out, 1).tolist()]

texts = generate("ROMEO:", 120, temperature=0.8, seed=11)
# --- end ---
print(json.dumps({"texts": texts, "vocab": "".join(chars), "precision": meta["precision"],
                  "cases": [generate(*c) for c in cases]}))
"""

ONNX = r"""
# --- README snippet ---
import json, numpy as np, onnxruntime as ort

session = ort.InferenceSession(path)  # one step for every row
meta = json.loads(session.get_modelmeta().custom_metadata_map["charrnn.json"])
chars, known, names = meta["vocab"], len(meta["vocab"]), [i.name for i in session.get_inputs()]
step = lambda *inputs: session.run(None, dict(zip(names, inputs)))

def generate(prompt, length, temperature=0.0, top_k=0, rows=1, seed=0):
    rng, kth = np.random.default_rng(seed), np.array([(top_k or known) - 1])
    ids, state = np.array([chars.index(c) for c in prompt]), [np.zeros((1, n), np.float32) for n in meta["state"]]
    for i in ids[:-1]:  # the prompt, on one row
        _, *state = step(i[None], np.zeros((1, known), np.float32), kth, *state)
    state, pending, out = [s.repeat(rows, 0) for s in state], ids[-1:].repeat(rows), []
    for _ in range(length):  # Gumbel-max: argmax(logits + T * Gumbel noise)
        noise = (temperature * rng.gumbel(size=(rows, known))).astype(np.float32)
        pending, *state = step(pending, noise, kth, *state)
        out.append(pending)
    return ["".join(chars[i] for i in row) for row in np.stack(out, 1)]

texts = generate("ROMEO:", 120)  # greedy
# --- end ---
print(json.dumps({"texts": texts, "vocab": "".join(chars), "cases": [generate(*c) for c in cases]}))
"""

CASES = [("JULIET:", 50, 1.0, 5, 3, 2), ("ROMEO:", 60, 0.0, 0, 2, 0), ("A", 40, 1.7, 0, 1, 99)]


def run_isolated(snippet: str, hidden: set, out, cases, cwd) -> dict:
    code = f"HIDDEN = {sorted(hidden)!r}\n" + HIDE + snippet
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(out), json.dumps(cases)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_exported_file_generates_what_generate_py_generates(trained_run, tmp_path, precision):
    out = tmp_path / "export" / "generator.pt2"
    exported = run_cli(
        "export.py", "ckpt=last", f"out={out}", f"precision={precision}", cwd=trained_run
    )
    assert exported.returncode == 0, exported.stderr
    assert out.is_file() and str(out) in exported.stderr
    generated = run_cli(
        "generate.py",
        "ckpt=last",
        "length=120",
        "temperature=0.8",
        "seed=11",
        f"precision={precision}",
        cwd=trained_run,
    )
    assert generated.returncode == 0, generated.stderr

    got = run_isolated(PT2, {"charrnn"}, out, CASES, tmp_path)

    assert generated.stdout == "ROMEO:" + got["texts"][0] + "\n"
    assert got["precision"] == precision
    trained = load(resolve("last", trained_run / "outputs"))
    assert got["vocab"] == trained.vocab.chars
    sampler = Sampler(trained.net, trained.vocab, precision=precision)
    for case, texts in zip(CASES, got["cases"], strict=True):
        prompt, length, temperature, top_k, rows, seed = case
        expected = sampler.generate(prompt, length, temperature, top_k, rows, seed_generator(seed))
        assert texts == expected
        assert len(texts) == rows and all(len(t) == length for t in texts)


def test_onnx_file_under_onnxruntime_generates_generate_py_greedy_text(trained_run, tmp_path):
    out = tmp_path / "generator.onnx"
    exported = run_cli("export.py", "ckpt=last", f"out={out}", cwd=trained_run)
    assert exported.returncode == 0, exported.stderr
    assert "onnxruntime.InferenceSession" in exported.stderr
    generated = run_cli(  # the ONNX step has fp32 weights: compare with generate.py's fp32
        "generate.py", "ckpt=last", "length=120", "temperature=0", "precision=fp32", cwd=trained_run
    )
    assert generated.returncode == 0, generated.stderr
    cases = [("JULIET:", 50, 0.0, 0, 3), ("A", 40, 1.0, 5, 2, 7)]
    got = run_isolated(ONNX, {"charrnn", "torch"}, out, cases, tmp_path)

    assert generated.stdout == "ROMEO:" + got["texts"][0] + "\n"
    trained = load(resolve("last", trained_run / "outputs"))
    greedy = Sampler(trained.net, trained.vocab).generate("JULIET:", 50, 0.0, 0, 3)
    assert got["cases"][0] == greedy
    assert len(got["cases"][1]) == 2 and all(len(t) == 40 for t in got["cases"][1])
    assert set("".join(got["cases"][1])) <= set(trained.vocab.chars)


def test_export_errors_leave_the_old_file_alone(trained_run, tmp_path):
    out = tmp_path / "generator.pt2"
    out.write_bytes(b"an earlier export")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 100)
    for settings, needle in [
        ({"ckpt": str(bad), "out": str(out)}, "is not a PyTorch checkpoint"),
        ({"ckpt": "last", "out": str(tmp_path / "generator.pt")}, "ending in .pt2"),
        ({"ckpt": str(tmp_path / "none.ckpt"), "out": str(out)}, "does not exist"),
        ({"ckpt": "last", "out": str(out), "precision": "int4"}, "precision: 'int4'"),
        (
            {"ckpt": "last", "out": str(tmp_path / "g.onnx"), "precision": "int8"},
            "not allowed for onnx",
        ),
    ]:
        settings = {"precision": "auto", **settings}
        cfg = OmegaConf.create({"runs_dir": str(trained_run / "outputs"), **settings})
        with pytest.raises(CharRNNError, match=needle) as err:
            export(cfg)
        assert "\n" not in str(err.value)
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "generator.pt2"]

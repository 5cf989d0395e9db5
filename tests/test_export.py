"""export.py: one file that generates with only torch (.pt2), exactly the text generate.py generates,
or with only onnxruntime (.onnx), generate.py's greedy text."""

import json
import re
import subprocess
import sys

import pytest
from conftest import CONF, ROOT, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from charrnn.errors import CharRNNError
from charrnn.run.checkpoints import load, resolve
from charrnn.run.export import export
from charrnn.run.generate import generate
from charrnn.sampling import Sampler, seed_generator

# The README's snippet, run in `python -I` (no user site, no cwd on the path) with charrnn (and
# for ONNX torch too) hidden even from the editable install; then a JSON line of what it made.
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
REPORT = r"""
print(json.dumps({"vocab": "".join(chars), "meta": meta, "cases": [generate(*c) for c in cases]}))
"""


def readme_snippet(file_name: str) -> str:
    """The README's python block that generates from `file_name`, reading `path` instead."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if f'"{file_name}"' in b]
    return block.replace(f'"{file_name}"', "path")


# the last: a prompt longer than one exported call's chunk of steps
CASES = [("JULIET:", 50, 1.0, 5, 3, 2), ("ROMEO:", 60, 0.0, 0, 2, 0), ("A", 40, 1.7, 0, 1, 99)]
CASES += [("ROMEO: " * 6, 30, 1.0, 0, 2, 3)]


def run_isolated(snippet: str, hidden: set, out, cases, cwd) -> tuple[str, dict]:
    """What the snippet printed, and its report."""
    code = f"HIDDEN = {sorted(hidden)!r}\n" + HIDE + snippet + REPORT
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(out), json.dumps(cases)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed, _, report = result.stdout.rstrip("\n").rpartition("\n")
    return printed + "\n", json.loads(report)


def composed(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_exported_file_generates_what_generate_py_generates(
    trained_run, tmp_path, precision, capsys, monkeypatch
):
    out = tmp_path / "export" / "generator.pt2"
    export_options = ("ckpt=last", f"out={out}", f"precision={precision}")
    options = ("ckpt=last", "length=120", "temperature=0.8", "seed=11", f"precision={precision}")
    if precision == "int8":  # the commands themselves once; the other precisions in-process
        exported = run_cli("export.py", *export_options, cwd=trained_run)
        assert exported.returncode == 0, exported.stderr
        assert str(out) in exported.stderr
        generated = run_cli("generate.py", *options, cwd=trained_run)
        assert generated.returncode == 0, generated.stderr
        generate_py_text = generated.stdout
    else:
        monkeypatch.chdir(trained_run)
        export(composed("export", *export_options))
        capsys.readouterr()
        generate(composed("generate", *options))
        generate_py_text = capsys.readouterr().out
    assert out.is_file()

    printed, got = run_isolated(readme_snippet("generator.pt2"), {"charrnn"}, out, CASES, tmp_path)

    assert generate_py_text == printed
    assert got["meta"]["precision"] == precision
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
    snippet = readme_snippet("generator.onnx")
    printed, got = run_isolated(snippet, {"charrnn", "torch"}, out, cases, tmp_path)

    assert generated.stdout == printed
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

"""Export: a chunk of steps with its vocabulary in one file that generates with only torch
(`.pt2`, torch.export) or only onnxruntime (`.onnx`, the optional extra `charrnn[onnx]`: torch.onnx's
dynamo exporter, the vocabulary in the model's metadata), verified before it replaces `out`."""

import io
import json
import logging
import sys
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from charrnn.errors import CharRNNError
from charrnn.files import write_atomically
from charrnn.run.checkpoints import load, resolve
from charrnn.sampling import CHUNK, Sampler, resolve_precision, seed_generator

META = "charrnn.json"  # the archive's extra file (ONNX: metadata key) with vocab and state sizes
# what the written file must reproduce from the first character: length, T, k, rows, seed
CHECKS = [(64, 0.0, 0, 2, 0), (64, 1.0, 5, 2, 1)]


def step_inputs(sampler: Sampler) -> tuple[tuple, tuple]:
    """Example inputs of a chunk (CHUNK steps, 2 rows) and dynamic shapes: any number of rows."""
    known, rows = sampler.vocab.unk_id, torch.export.Dim("rows", min=1)
    state = [torch.zeros(2, n) for n in sampler.state_sizes]
    feed, last = torch.zeros(CHUNK, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    args = (feed, last, torch.zeros(CHUNK, 2, known), torch.tensor([known - 1]))
    return (*args, state), ({1: rows}, {0: rows}, {1: rows}, None, [{0: rows}] * len(state))


def check_reload(sampler: Sampler, out: Path, meta: dict, found: str, step, greedy_only=False):
    """Raises unless the file kept `meta` (read back: `found`) and generates what `sampler` does."""
    if json.loads(found or "null") != meta:
        raise CharRNNError(f"out: the file written for {out} lost its {META}")
    loaded, prompt = Sampler(None, sampler.vocab, step, meta["state"]), sampler.vocab.chars[0]
    for *options, seed in CHECKS[:1] if greedy_only else CHECKS:
        want = sampler.generate(prompt, *options, seed_generator(seed))
        if loaded.generate(prompt, *options, seed_generator(seed)) != want:
            raise CharRNNError(f"out: the file written for {out} does not reproduce the sampler")


def save_pt2(sampler: Sampler, out: Path, meta: dict) -> None:
    """A torch.export archive; reloaded from `out` and checked."""
    args, dynamic = step_inputs(sampler)
    with torch.no_grad():  # a graph whose number of rows is free
        program = torch.export.export(sampler.step, args, dynamic_shapes=dynamic)
    buffer = io.BytesIO()  # (through bytes: torch.export warns on a name not ending in .pt2)
    torch.export.save(program, buffer, extra_files={META: json.dumps(meta)})
    out.write_bytes(buffer.getvalue())
    extra = {META: ""}
    step = torch.export.load(io.BytesIO(out.read_bytes()), extra_files=extra).module()
    check_reload(sampler, out, meta, extra[META], step)


def save_onnx(sampler: Sampler, out: Path, meta: dict) -> None:
    """Writes `out`, reloads it in onnxruntime and checks its greedy text (sampled text could
    differ: onnxruntime's float rounding is not torch's)."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (what torch.onnx's exporter needs)
    except ImportError as err:
        raise CharRNNError(
            f"out: {out.name} needs the onnx extra ({err.name} is missing); "
            "pip install -e '.[onnx]' -c constraints.txt"
        ) from None
    args, dynamic = step_inputs(sampler)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():  # (that logger lists each torchvision op
        # it skips; torch 2.13's exporter deep-copies a LeafSpec and renames the shared rows axis)
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
        warnings.filterwarnings("ignore", "# The axis name: rows", UserWarning)
        program = torch.onnx.export(
            sampler.step, args, dynamo=True, dynamic_shapes=dynamic, verbose=False
        )
    program.model.metadata_props[META] = json.dumps(meta)
    program.save(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def step(feed, last, noise, kth, state):  # the session, called like StepNet
        inputs = (t.numpy() for t in (feed, last, noise, kth, *state))
        ids, *state = session.run(None, dict(zip(names, inputs, strict=True)))
        return torch.from_numpy(ids), [torch.from_numpy(s) for s in state]

    found = session.get_modelmeta().custom_metadata_map.get(META)
    check_reload(sampler, out, meta, found, step, greedy_only=True)


WRITERS = {".pt2": save_pt2, ".onnx": save_onnx}  # out's suffix -> how it is written
LOADERS = {".pt2": "torch.export.load", ".onnx": "onnxruntime.InferenceSession"}


def export(cfg: DictConfig) -> Path:
    """Runs the command: checkpoint → step-function file, verified before it lands."""
    if not isinstance(cfg.out, str) or Path(cfg.out).suffix not in WRITERS:
        raise CharRNNError(
            f"out: {cfg.out!r} is not allowed; give a file name ending in .pt2 (torch.export) "
            "or .onnx (onnxruntime)"
        )
    out = Path(cfg.out).expanduser()
    precision = resolve_precision(cfg.precision, "onnx" if out.suffix == ".onnx" else "cpu")
    path = resolve(cfg.ckpt, cfg.runs_dir)
    trained = load(path)
    sampler = Sampler(trained.net, trained.vocab, precision=precision)
    meta = {"vocab": trained.vocab.chars, "state": sampler.state_sizes, "chunk": CHUNK}
    meta |= {"precision": precision, "model": trained.hparams["model"], "checkpoint": str(path)}
    tracing = f"tracing the {CHUNK}-step chunk (seconds, more with more layers)"
    print(f"{path}: {tracing}", file=sys.stderr)
    write_atomically(out, lambda tmp: WRITERS[out.suffix](sampler, Path(tmp), meta))
    size, loader = f"{out.stat().st_size:,} bytes, {precision} weights", LOADERS[out.suffix]
    print(f"{path} -> {out} ({size}); load it with {loader}", file=sys.stderr)
    return out

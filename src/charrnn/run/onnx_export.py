"""The `.onnx` export (the optional extra `charrnn[onnx]`): the torch.export step graph through
torch.onnx's dynamo exporter, the vocabulary in the model's metadata, checked under onnxruntime."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from charrnn.errors import CharRNNError
from charrnn.run.export import META, check_reload, step_inputs
from charrnn.sampling import Sampler


class OnnxStep:
    """An onnxruntime session called like StepNet: (ids, noise, kth, state) -> (ids, state)."""

    def __init__(self, session):
        self.session, self.names = session, [i.name for i in session.get_inputs()]

    def __call__(self, ids, noise, kth, state):
        feeds = dict(zip(self.names, (t.numpy() for t in (ids, noise, kth, *state)), strict=True))
        ids, *state = self.session.run(None, feeds)
        return torch.from_numpy(ids), [torch.from_numpy(s) for s in state]


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
    found = session.get_modelmeta().custom_metadata_map.get(META)
    check_reload(sampler, out, meta, found, OnnxStep(session), greedy_only=True)

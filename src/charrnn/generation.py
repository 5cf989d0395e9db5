"""The generate command: check the options, load the checkpoint, sample, stream or print, save."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from charrnn.checkpoint import load, resolve
from charrnn.errors import CharRNNError
from charrnn.files import replace_atomically
from charrnn.sampling import Sampler, check_options, seed_generator
from charrnn.vocab import Vocab

UNKNOWN_CHARS = ("error", "drop", "replace")


def _whole(value, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CharRNNError(f"{key}: {value!r} is not allowed; use a whole number >= {minimum}")
    return value


def validate_generate(cfg: DictConfig) -> None:
    """Everything that can be checked before the checkpoint is read."""
    _whole(cfg.length, "length", 1)
    _whole(cfg.num_samples, "num_samples", 1)
    _whole(cfg.top_k, "top_k", 0)
    if cfg.seed is not None:
        _whole(cfg.seed, "seed", 0)
    t = cfg.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
        raise CharRNNError(f"temperature: {t!r} is not allowed; use a number >= 0 (0 = greedy)")
    if not isinstance(cfg.prompt, str) or not cfg.prompt:
        raise CharRNNError("prompt: give at least one character to start from (prompt='ROMEO:')")
    if cfg.unknown_chars not in UNKNOWN_CHARS:
        raise CharRNNError(
            f"unknown_chars: {cfg.unknown_chars!r} is not allowed; choose one of "
            f"{', '.join(UNKNOWN_CHARS)}"
        )
    if not isinstance(cfg.replace_with, str) or len(cfg.replace_with) != 1:
        raise CharRNNError(f"replace_with: {cfg.replace_with!r} is not allowed; use one character")


def clean_prompt(prompt: str, vocab: Vocab, unknown_chars: str, replace_with: str) -> str:
    """The prompt with characters the model never saw dropped or replaced, or a one-line error."""
    unknown = vocab.unknown(prompt)
    if not unknown:
        return prompt
    shown = ", ".join(repr(c) for c in unknown)
    if unknown_chars == "error":
        raise CharRNNError(
            f"prompt has characters the model never saw: {shown}; remove them, or pass "
            "unknown_chars=drop, or unknown_chars=replace (with replace_with=' ')"
        )
    if unknown_chars == "replace":
        if vocab.unknown(replace_with):
            raise CharRNNError(
                f"replace_with: {replace_with!r} is not in the model's vocabulary either; "
                f"choose one of {vocab.chars!r}"
            )
        return "".join(replace_with if c in unknown else c for c in prompt)
    kept = "".join(c for c in prompt if c not in unknown)
    if not kept:
        raise CharRNNError(f"prompt: nothing is left after dropping {shown}; give another prompt")
    return kept


def pick_device(name: str) -> torch.device:
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise CharRNNError(
            f"device: {name!r} is not a device; use cpu, cuda, cuda:1 or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CharRNNError(f"device: {name!r} is not available here (no CUDA); use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CharRNNError(f"device: {name!r} is not available here (no MPS); use device=cpu")
    return device


def generate(cfg: DictConfig) -> list[str]:
    """Runs the command; returns the samples, prompt included."""
    validate_generate(cfg)
    device = pick_device(cfg.device)
    path = resolve(cfg.ckpt, cfg.runs_dir)
    trained = load(path)
    vocab, model = trained.vocab, trained.hparams["model"]
    prompt = clean_prompt(cfg.prompt, vocab, cfg.unknown_chars, cfg.replace_with)
    check_options(vocab, prompt, cfg.length, cfg.temperature, cfg.top_k)
    seed = cfg.seed if cfg.seed is not None else int(torch.randint(2**31, ()))
    print(
        f"{path}: {model['cell']} {model['num_layers']}x{model['rnn_units']}, "
        f"{vocab.unk_id} characters; seed={seed}",
        file=sys.stderr,
        flush=True,
    )
    sampler = Sampler(trained.net.to(device), vocab)
    stream = cfg.num_samples == 1

    def show(chars: list[str]) -> None:
        sys.stdout.write(chars[0])
        sys.stdout.flush()

    if stream:
        sys.stdout.write(prompt)
    texts = sampler.generate(
        prompt,
        cfg.length,
        cfg.temperature,
        cfg.top_k,
        cfg.num_samples,
        seed_generator(seed),
        on_step=show if stream else None,
    )
    samples = [prompt + text for text in texts]
    if stream:
        sys.stdout.write("\n")
        shown = samples[0] + "\n"
    else:
        shown = "".join(
            f"===== sample {i + 1}/{len(samples)} =====\n{s}\n" for i, s in enumerate(samples)
        )
        sys.stdout.write(shown)
    sys.stdout.flush()
    if cfg.out:
        out = Path(cfg.out).expanduser()
        replace_atomically(out, lambda tmp: Path(tmp).write_text(shown, encoding="utf-8"))
        print(f"wrote {len(samples)} sample(s) to {out}", file=sys.stderr)
    return samples

"""The generate command: check the options, load the checkpoint, sample, stream or print, save."""

import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charrnn.errors import CharRNNError, check, one_of, whole
from charrnn.files import write_atomically
from charrnn.run.checkpoints import load, resolve
from charrnn.sampling import (
    UNKNOWN_CHARS,
    Sampler,
    check_options,
    clean_prompt,
    resolve_precision,
    seed_generator,
)

RULES = {  # the command's own options; the sampling options are the sampler's to check
    "seed": ((lambda v: v is None or (whole(v) and v >= 0)), "use a whole number >= 0, or null"),
    "unknown_chars": one_of(UNKNOWN_CHARS),
    "replace_with": ((lambda v: isinstance(v, str) and len(v) == 1), "use one character"),
}


def read_prompt(cfg: DictConfig) -> str:
    """The prompt: prompt_file's text as is (a UTF-8 file, or - for standard input), else prompt."""
    if (source := cfg.get("prompt_file")) is None:
        return cfg.prompt
    typed = HydraConfig.initialized() and HydraConfig.get().overrides.task
    if any(o.lstrip("+").startswith("prompt=") for o in typed or ()):
        raise CharRNNError("prompt_file: give prompt= or prompt_file=, not both")
    name = "standard input" if source == "-" else source
    try:
        text = (sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()).decode()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else f"not UTF-8 text: byte {err.start}"
        raise CharRNNError(
            f"prompt_file: can't read {name} ({why}); use a UTF-8 file or -"
        ) from None
    if not text:
        raise CharRNNError(f"prompt_file: {name} is empty; give at least one character")
    return text


def pick_device(name: str) -> torch.device:
    try:
        device = torch.device(str(name))
        torch.empty(0, device=device)  # fails where torch has no such device (no CUDA, no MPS)
    except (RuntimeError, AssertionError) as err:
        why = str(err).partition("\n")[0]
        raise CharRNNError(f"device: {name!r} is not usable here ({why}); use device=cpu") from None
    return device


def generate(cfg: DictConfig) -> list[str]:
    """Runs the command; returns the samples, prompt included."""
    check(cfg.get, RULES)
    device = pick_device(cfg.device)
    typed = read_prompt(cfg)
    precision = resolve_precision(cfg.precision, device.type)
    path = resolve(cfg.ckpt, cfg.runs_dir)
    trained = load(path)
    vocab, model = trained.vocab, trained.hparams["model"]
    prompt = clean_prompt(typed, vocab, cfg.unknown_chars, cfg.replace_with)
    seed = cfg.seed if cfg.seed is not None else int(torch.randint(2**31, ()))
    options = (cfg.length, cfg.temperature, cfg.top_k, cfg.num_samples)
    check_options(vocab, *options)  # before the header, so that a bad option is the one line
    sampler = Sampler(trained.net.to(device), vocab, precision=precision)
    shape = f"{model['cell']} {model['num_layers']}x{model['rnn_units']}"
    header = f"{path}: {shape}, {vocab.unk_id} characters; {precision} weights; seed={seed}"
    print(header, file=sys.stderr)
    if stream := cfg.num_samples == 1:  # one sample streams; a batch is printed whole
        print(prompt, end="")
    show = (lambda chars: print(chars[0], end="", flush=True)) if stream else None
    samples = [prompt + t for t in sampler.generate(prompt, *options, seed_generator(seed), show)]
    blocks = (f"===== sample {i + 1}/{len(samples)} =====\n{s}\n" for i, s in enumerate(samples))
    shown = samples[0] + "\n" if stream else "".join(blocks)
    print("\n" if stream else shown, end="", flush=True)
    if cfg.out:
        out = Path(cfg.out).expanduser()
        write_atomically(out, lambda tmp: Path(tmp).write_text(shown, encoding="utf-8"))
        print(f"wrote {len(samples)} sample(s) to {out}", file=sys.stderr)
    return samples

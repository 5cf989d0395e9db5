"""Generation speed, side by side: our Sampler against the tutorial's one-call-per-character loop.

For the benchmark (`make bench`) and for a quick look: `measure_generation()` builds a randomly
initialised model of the tutorial's size and times both ways interleaved (A B A B ...), so a busy
machine slows both alike; quote the ratios.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from charrnn.net import CharRNN
from charrnn.run.checkpoints import load, resolve
from charrnn.sampling import PRECISIONS, Sampler, resolve_precision, seed_generator
from charrnn.vocab import Vocab

WEIGHTS = PRECISIONS[1:]  # fp32, bf16, int8 (auto picks one of them)

# the 65 characters of tiny Shakespeare (the vocabulary size is what matters for speed)
SHAKESPEARE_CHARS = (
    "\n !$&',-.3:;?" + "".join(map(chr, range(65, 91))) + "".join(map(chr, range(97, 123)))
)


def tutorial_generate(
    net: CharRNN,
    vocab: Vocab,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    no_autograd=torch.no_grad,
) -> list[str]:
    """What a user writes without us (the TensorFlow tutorial's OneStep loop, in PyTorch): call
    the model on one character at a time, carry its state, mask the unknown id, sample."""
    with no_autograd():
        return _tutorial_loop(net, vocab, prompt, length, temperature, num_samples, generator)


def _tutorial_loop(net, vocab, prompt, length, temperature, num_samples, generator) -> list[str]:
    net.eval()
    ids = torch.as_tensor(vocab.encode(prompt), dtype=torch.long).expand(num_samples, -1)
    logits, hidden = net(ids)
    out = []
    for _ in range(length):
        logits = logits[:, -1] / temperature
        logits[:, vocab.unk_id] = float("-inf")
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        out.append(nxt)
        logits, hidden = net(nxt, hidden)
    return [vocab.decode(row) for row in torch.cat(out, 1)]


def measure_generation(
    cell: str = "gru",
    embedding_dim: int = 256,
    rnn_units: int = 1024,
    num_layers: int = 1,
    length: int = 1000,
    batches: tuple[int, ...] = (1, 5),
    repeats: int = 5,
    prompt: str = "ROMEO:",
    temperature: float = 1.0,
    precisions: tuple[str, ...] = WEIGHTS,
) -> dict[str, list[float]]:
    """Characters per second (all rows together) of each way (our Sampler at each precision, the
    tutorial's loop) at each batch size, one entry per repeat:
    {"fp32_b1": [...], "bf16_b1": [...], "int8_b1": [...], "tutorial_b1": [...], ...}."""
    torch.manual_seed(0)
    vocab = Vocab(SHAKESPEARE_CHARS)
    net = CharRNN(vocab.size, cell, embedding_dim, rnn_units, num_layers).eval()
    # the loop a user writes calls plain nn.GRU / nn.LSTM (same weights)
    plain = CharRNN(vocab.size, cell, embedding_dim, rnn_units, num_layers, impl="torch").eval()
    plain.load_state_dict(net.state_dict())
    ways = {
        p: Sampler(net, vocab, precision=p).generate for p in precisions
    }  # each: (prompt, length, temperature, top_k, rows, generator)
    # the loop a user writes, under no_grad and under inference_mode: the faster of the two counts
    ways["tutorial"] = lambda *a: tutorial_generate(plain, vocab, *a[:3], *a[4:])
    ways["tutorial_inference"] = lambda *a: tutorial_generate(
        plain, vocab, *a[:3], *a[4:], no_autograd=torch.inference_mode
    )
    for way in ways.values():  # warm-up: allocator, caches
        for batch in batches:
            way(prompt, length, temperature, 0, batch, seed_generator(0))
    speeds: dict[str, list[float]] = {f"{w}_b{b}": [] for b in batches for w in ways}
    for repeat in range(repeats):
        for batch in batches:
            for name, way in ways.items():
                start = time.perf_counter()
                way(prompt, length, temperature, 0, batch, seed_generator(repeat))
                speeds[f"{name}_b{batch}"].append(batch * length / (time.perf_counter() - start))
    for batch in batches:
        inference = speeds.pop(f"tutorial_inference_b{batch}")
        speeds[f"tutorial_b{batch}"] = list(map(max, speeds[f"tutorial_b{batch}"], inference))
    return speeds


def measure_export(
    cell: str = "gru",
    embedding_dim: int = 256,
    rnn_units: int = 1024,
    length: int = 1000,
    repeats: int = 5,
    precisions: tuple[str, ...] = WEIGHTS,
    prompt: str = "ROMEO:",
) -> dict[str, list[float]]:
    """Characters per second at batch 1 of the exported `.pt2` step (loaded the README's way:
    torch.export.load, no guards, no input checks) against the Sampler it was exported from,
    interleaved: {"fp32_sampler": [...], "fp32_pt2": [...], ...}. Both run the same loop
    (Sampler with the loaded step takes every input, as the README's loop does)."""
    import io
    import json
    import tempfile

    from charrnn.run.export import META, save_pt2

    torch.manual_seed(0)
    vocab = Vocab(SHAKESPEARE_CHARS)
    net = CharRNN(vocab.size, cell, embedding_dim, rnn_units, 1).eval()
    ways = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            sampler = Sampler(net, vocab, precision=precision)
            meta = {"vocab": vocab.chars, "state": sampler.state_sizes}
            out = Path(tmp) / f"{precision}.pt2"
            save_pt2(sampler, out, meta)
            extra = {META: ""}
            program = torch.export.load(io.BytesIO(out.read_bytes()), extra_files=extra)
            step = program.module(check_guards=False)
            step.validate_inputs = False
            loaded = Sampler(None, vocab, step, json.loads(extra[META])["state"])
            ways[f"{precision}_sampler"], ways[f"{precision}_pt2"] = sampler, loaded
    for way in ways.values():  # warm-up
        way.generate(prompt, length, 1.0, 0, 1, seed_generator(0))
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            way.generate(prompt, length, 1.0, 0, 1, seed_generator(repeat))
            speeds[name].append(length / (time.perf_counter() - start))
    return speeds


@torch.no_grad()
def teacher_forced(step, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feeds ids [T] one step at a time through `step` (a StepNet, the very code that generates);
    returns each next character's log-probability [T - 1] and the step's argmax [T - 1]. The
    softmax is over the known characters (the sampler never draws the unknown id)."""
    state, logits = [torch.zeros(1, n) for n in step.state_sizes()], []
    for t in range(ids.numel() - 1):
        x, state = step.logits(ids[t : t + 1], state)
        logits.append(x)
    logits = torch.cat(logits).log_softmax(1)
    return logits.gather(1, ids[1:, None])[:, 0], logits.argmax(1)


def measure_quality(
    checkpoint: str,
    corpus: str,
    precisions: tuple[str, ...] = WEIGHTS,
    val_chars: int = 5000,
    val_frac: float = 0.1,
    greedy_length: int = 1000,
    prompt: str = "ROMEO:",
) -> dict[str, dict[str, float]]:
    """Per precision, against fp32: the mean loss (nats/char) of the first `val_chars`
    characters of the corpus' val split (its last `val_frac`), teacher-forced through the step,
    and greedy agreement over `greedy_length` characters: the share of positions where the step,
    fed fp32's greedy text, picks fp32's character, and how long the free-running texts agree."""
    trained = load(resolve(checkpoint))
    text = Path(corpus).read_text(encoding="utf-8")
    val = text[int(len(text) * (1 - val_frac)) :][:val_chars]
    ids = torch.as_tensor(trained.vocab.encode(val), dtype=torch.long)
    if int(ids.max()) >= trained.vocab.unk_id:
        raise SystemExit(f"{corpus} has characters {checkpoint} never saw: not its corpus?")
    samplers = {p: Sampler(trained.net, trained.vocab, precision=p) for p in precisions}
    (greedy,) = samplers["fp32"].generate(prompt, greedy_length, 0)
    forced = torch.as_tensor(trained.vocab.encode(prompt + greedy), dtype=torch.long)
    quality = {}
    for name, sampler in samplers.items():
        (sample,) = sampler.generate(prompt, greedy_length, 0)
        picks = teacher_forced(sampler.step, forced)[1][len(prompt) - 1 :]
        same = [a == b for a, b in zip(sample, greedy, strict=True)] + [False]
        quality[name] = {
            "val_chars": ids.numel() - 1,
            "val_loss": -float(teacher_forced(sampler.step, ids)[0].mean()),
            "greedy_agreement": float((picks == forced[len(prompt) :]).float().mean()),
            "greedy_same_prefix": same.index(False),
        }
    return quality


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="gru", choices=("gru", "lstm"))
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--rnn-units", type=int, default=1024)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--checkpoint", help="a trained .ckpt (or last / best) for the quality")
    parser.add_argument("--corpus", default="data/shakespeare.txt", help="its text (val split)")
    parser.add_argument("--val-chars", type=int, default=5000, help="val characters scored")
    parser.add_argument("--export", action="store_true", help="time the .pt2 step instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export:
        speeds = measure_export(
            args.cell, args.embedding_dim, args.rnn_units, args.length, args.repeats
        )
        for p in WEIGHTS:
            pt2, ours = (statistics.median(speeds[f"{p}_{w}"]) for w in ("pt2", "sampler"))
            print(
                f"  {p}: .pt2 {pt2:,.0f} chars/s, Sampler {ours:,.0f}: {ours / pt2:.2f}x its time"
            )
        return
    speeds = measure_generation(
        args.cell,
        args.embedding_dim,
        args.rnn_units,
        args.num_layers,
        args.length,
        repeats=args.repeats,
    )
    median = {name: statistics.median(values) for name, values in speeds.items()}
    print(
        f"{args.cell} {args.num_layers}x{args.rnn_units}, embedding {args.embedding_dim}, "
        f"{args.length} chars, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"chars/s median [min-max] of {args.repeats} interleaved repeats; "
        f"precision=auto is {resolve_precision('auto')} here"
    )
    for name, values in speeds.items():
        print(f"  {name:12s} {median[name]:9,.0f}  [{min(values):,.0f}-{max(values):,.0f}]")
    for p in WEIGHTS:
        ratios = [median[f"{p}_b{b}"] / median[f"tutorial_b{b}"] for b in (1, 5)]
        # time of batch 5 / time of batch 1 = (b1 chars/s * 5) / (b5 chars/s)
        print(
            f"  {p}: sampler / tutorial = {ratios[0]:.2f}x at batch 1, {ratios[1]:.2f}x at "
            f"batch 5; time of batch 5 / batch 1 = {5 * median[f'{p}_b1'] / median[f'{p}_b5']:.2f}"
        )
    if not args.checkpoint:
        print("  quality: no trained checkpoint (--checkpoint PATH|last), so none is reported")
        return
    quality = measure_quality(args.checkpoint, args.corpus, val_chars=args.val_chars)
    print(f"quality of {args.checkpoint} on the first {args.val_chars} val chars of {args.corpus}:")
    for p, row in quality.items():
        print(
            f"  {p}: val loss {row['val_loss']:.5f} nats/char "
            f"({row['val_loss'] - quality['fp32']['val_loss']:+.5f} vs fp32); greedy agrees "
            f"with fp32 at {row['greedy_agreement']:.1%} of 1,000 positions, identical for the "
            f"first {row['greedy_same_prefix']}"
        )


if __name__ == "__main__":
    main()

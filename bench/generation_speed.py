"""Generation speed, side by side: our Sampler against the tutorial's one-call-per-character loop.

For the benchmark (`make bench`) and for a quick look: `measure_generation()` builds a randomly
initialised model of the tutorial's size and times both ways interleaved (A B A B ...), so a busy
machine slows both alike; quote the ratios.
"""

from __future__ import annotations

import statistics
import time

import torch

from charrnn.net import CharRNN
from charrnn.sampling import Sampler, seed_generator
from charrnn.vocab import Vocab

# the 65 characters of tiny Shakespeare (the vocabulary size is what matters for speed)
SHAKESPEARE_CHARS = (
    "\n !$&',-.3:;?" + "".join(map(chr, range(65, 91))) + "".join(map(chr, range(97, 123)))
)


@torch.no_grad()
def tutorial_generate(
    net: CharRNN,
    vocab: Vocab,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> list[str]:
    """What a user writes without us (the TensorFlow tutorial's OneStep loop, in PyTorch): call
    the model on one character at a time, carry its state, mask the unknown id, sample."""
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
) -> dict[str, list[float]]:
    """Characters per second (all rows together) of each way at each batch size, one entry per
    repeat: {"sampler_b1": [...], "tutorial_b1": [...], "sampler_b5": [...], ...}."""
    torch.manual_seed(0)
    vocab = Vocab(SHAKESPEARE_CHARS)
    net = CharRNN(vocab.size, cell, embedding_dim, rnn_units, num_layers).eval()
    sampler = Sampler(net, vocab)
    # the loop a user writes calls plain nn.GRU / nn.LSTM (same weights)
    plain = CharRNN(vocab.size, cell, embedding_dim, rnn_units, num_layers, impl="torch").eval()
    plain.load_state_dict(net.state_dict())
    ways = {
        "sampler": lambda b, g: sampler.generate(prompt, length, temperature, 0, b, g),
        "tutorial": lambda b, g: tutorial_generate(plain, vocab, prompt, length, temperature, b, g),
    }
    for way in ways.values():  # warm-up: allocator, caches
        for batch in batches:
            way(batch, seed_generator(0))
    speeds: dict[str, list[float]] = {f"{w}_b{b}": [] for b in batches for w in ways}
    for repeat in range(repeats):
        for batch in batches:
            for name, way in ways.items():
                start = time.perf_counter()
                way(batch, seed_generator(repeat))
                speeds[f"{name}_b{batch}"].append(batch * length / (time.perf_counter() - start))
    return speeds


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
        f"chars/s median [min-max] of {args.repeats} interleaved repeats"
    )
    for name, values in speeds.items():
        print(f"  {name:12s} {median[name]:9,.0f}  [{min(values):,.0f}-{max(values):,.0f}]")
    for batch in (1, 5):
        print(
            f"  batch {batch}: sampler / tutorial = "
            f"{median[f'sampler_b{batch}'] / median[f'tutorial_b{batch}']:.2f}x"
        )
    # time of batch 5 / time of batch 1 = (b1 chars/s * 5) / (b5 chars/s)
    ratio = 5 * median["sampler_b1"] / median["sampler_b5"]
    print(f"  sampler time batch 5 / batch 1 = {ratio:.2f}")


if __name__ == "__main__":
    main()

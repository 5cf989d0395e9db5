"""The sampler against the model it samples: greedy = argmax, rows independent, seeds repeat."""

import pytest
import torch

from charrnn import int8_kernel
from charrnn.errors import CharRNNError
from charrnn.net import CharRNN
from charrnn.sampling import Sampler, int8_rows_weights, resolve_precision, seed_generator
from charrnn.vocab import Vocab

VOCAB = Vocab("\n !,.:?ADEIJLMNORTUaeghilnorstuy")


def make_net(cell="gru", layers=1, vocab=VOCAB, scale=3.0, seed=0, recurrent=1.0) -> CharRNN:
    """A random tiny network; `scale` sharpens its output distribution so rows diverge clearly,
    `recurrent` > 1 makes its dynamics lively enough that greedy text does not settle at once."""
    torch.manual_seed(seed)
    net = CharRNN(vocab.size, cell, embedding_dim=8, rnn_units=16, num_layers=layers)
    with torch.no_grad():
        net.head.weight.mul_(scale)
        for weight in net.rnn.parameters():
            weight.mul_(recurrent)
    return net.eval()


CELLS = [("gru", 1), ("lstm", 1), ("gru", 3), ("lstm", 2)]


LONG_PROMPT = "ROMEO: MAIDEN, TRUE JULIET! LIE DOUN, LIE!"  # fed over several chunks of steps


@pytest.mark.parametrize(
    "cell,layers,prompt", [(*c, "ROMEO:") for c in CELLS] + [(*c, LONG_PROMPT) for c in CELLS[:2]]
)
def test_greedy_is_the_models_argmax_step_by_step(cell, layers, prompt):
    net = make_net(cell, layers, seed=1, recurrent=3.0)
    (text,) = Sampler(net, VOCAB).generate(prompt, 40, temperature=0)
    assert len(set(text)) >= 4  # a varied text, or the comparison would prove little
    # the model's output at t depends only on inputs up to t, so one pass over prompt + text
    # gives, at every position, what the growing sequence gives (and spares oneDNN's LSTM a new
    # kernel per length)
    ids = torch.tensor([list(VOCAB.encode(prompt + text))])
    with torch.no_grad():  # before each generated char; no unknown
        logits = net(ids)[0][0, len(prompt) - 1 : -1, : VOCAB.unk_id]
    assert "".join(VOCAB.chars[i] for i in logits.argmax(1).tolist()) == text


@pytest.mark.parametrize("cell,layers", CELLS)
def test_step_logits_equal_the_models_logits(cell, layers):
    """Noise = -(the model's logits) + 1e-3 at one character makes the step pick that character
    only if every one of its logits is within 1e-3 of the model's."""
    net = make_net(cell, layers, scale=1.0)
    step = Sampler(net, VOCAB).step
    ids = torch.tensor(VOCAB.encode("ROMEO: Good night, sweet JULIET!"))
    known = VOCAB.unk_id
    with torch.no_grad():
        expected = net(ids[None])[0][0, :, :known]
        state = [torch.zeros(3, n) for n in step.state_sizes()]
        for k in range(len(ids)):
            picks = torch.tensor([k, k + 7, k + 13]) % known
            noise = -expected[k].expand(3, -1) + 1e-3 * torch.eye(known)[picks]
            drawn, state = step(ids[k].expand(1, 3), ids[0].expand(3), noise[None], None, state)
            assert drawn.tolist() == [picks.tolist()]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("cell,layers", CELLS)
def test_low_precision_logits_are_close_to_fp32(cell, layers, precision):
    """Weights (and the activations into each product) in bf16 keep 8 significant bits; int8
    rounds each weight row and each row of h to 1/254 of its largest |value| (h's rounding adds to
    the weights': the largest deviation here is still about a third of the bound): on this tiny
    net (logits within +-1) every logit stays within 0.01 of fp32's, and differs from it, so the
    low-precision product really ran."""
    net = make_net(cell, layers, scale=1.0)
    ids = torch.tensor(VOCAB.encode("ROMEO: Good night, sweet JULIET! Parting is such sorrow."))
    logits = {}
    for name in ("fp32", precision):
        step = Sampler(net, VOCAB, precision=name).step
        state, rows = [torch.zeros(1, n) for n in step.state_sizes()], []
        with torch.no_grad():
            for k in range(len(ids)):
                x, state = step.logits(ids[k : k + 1], state)
                rows.append(x)
        logits[name] = torch.cat(rows)
    assert step.read0.dtype == {"bf16": torch.bfloat16, "int8": torch.int8}[precision]
    assert logits[precision].dtype == torch.float32
    assert 0 < float((logits[precision] - logits["fp32"]).abs().max()) < 0.01


def test_int8_product_is_w8a8_and_each_row_its_own():
    """int8 is h quantised per row (max|h| / 127) times the int8 weights, summed exactly and
    dequantised: the fp32 reference of that, the same values for a row alone as in a batch of 5
    and from either kernel (what generate.py runs, what an exported file runs); bf16 h would be
    ~1e-3 off."""
    step = Sampler(make_net("gru", 2, scale=1.0), VOCAB, precision="int8").step
    h = torch.rand(5, 16, generator=seed_generator(0)) * 2 - 1
    s = h.abs().amax(1, keepdim=True) / 127
    sums = ((h / s).round().double() @ step.read0.double().t()).float()  # exact: small integers
    want = sums * s * step.scale0 + step.read_bias0
    with torch.no_grad():
        batch = step.product(0, h)
        assert all(torch.equal(step.product(0, h[i : i + 1])[0], batch[i]) for i in range(5))
        for kernel in ("vnni", "onednn"):  # int8_rows.cpp, oneDNN, then the export's _int_mm
            setattr(step, kernel, [None] * step.layers)
            assert torch.equal(step.product(0, h), batch)
    torch.testing.assert_close(batch, want, rtol=1e-6, atol=1e-6)


def test_int8_rows_kernel_is_built_where_the_cpu_runs_it_and_exact():
    """make install builds int8_rows.cpp where the CPU has AVX-512 VNNI (and only there is it
    loaded); its sums are _int_mm's, its rounding the fp32 epilogue's, for 1-8 rows and widths
    that are not whole blocks (67 outputs: 16 * 4 + 3; 13 inputs: 4 * 3 + 1)."""
    generator = seed_generator(3)
    w = torch.randint(-127, 128, (67, 13), generator=generator, dtype=torch.int8)
    scale, bias = torch.rand(67, generator=generator), torch.randn(67, generator=generator)
    rows = int8_rows_weights(w)
    assert int8_kernel.load() == int8_kernel.supported() == (rows is not None)
    for m in range(1, 9) if rows is not None else []:
        q = torch.randint(-127, 128, (m, 13), generator=generator).float()
        s = torch.rand(m, 1, generator=generator)
        want = torch.addcmul(bias, torch._int_mm(q.to(torch.int8), w.t()).mul(scale), s)
        got = torch.ops.charrnn.int8_rows(q.add(128).to(torch.uint8), *rows, scale, s, bias)
        assert torch.equal(got, want)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_text_decodes_and_repeats_with_its_seed(precision):
    sampler = Sampler(make_net("gru", 2), VOCAB, precision=precision)
    a = sampler.generate("JULIET:", 200, 1.0, 5, 3, seed_generator(7))
    assert a == sampler.generate("JULIET:", 200, 1.0, 5, 3, seed_generator(7))
    assert a != sampler.generate("JULIET:", 200, 1.0, 5, 3, seed_generator(8))
    assert len(a) == 3 and all(len(t) == 200 and set(t) <= set(VOCAB.chars) for t in a)
    (greedy,) = sampler.generate("JULIET:", 100, 0)
    assert len(greedy) == 100 and set(greedy) <= set(VOCAB.chars)


def test_precision_is_checked_where_it_enters():
    assert resolve_precision("auto") in ("int8", "fp32")
    assert resolve_precision("auto", "cuda") == "fp32" and resolve_precision("bf16") == "bf16"
    for value, target in [("fp16", "cpu"), (None, "cpu"), ("int8", "onnx"), ("bf16", "cuda")]:
        with pytest.raises(CharRNNError, match="precision") as err:
            resolve_precision(value, target)
        assert "\n" not in str(err.value) and "fp32" in str(err.value)


@pytest.mark.parametrize("cell,layers", CELLS)
def test_same_seed_same_text_and_other_seed_other_text(cell, layers):
    sampler = Sampler(make_net(cell, layers), VOCAB)
    a = sampler.generate("JULIET:", 200, 1.0, 0, 3, seed_generator(7))
    b = sampler.generate("JULIET:", 200, 1.0, 0, 3, seed_generator(7))
    c = sampler.generate("JULIET:", 200, 1.0, 0, 3, seed_generator(8))
    assert a == b
    assert a != c
    assert len(a) == 3 and all(len(t) == 200 for t in a)
    assert len(set(a)) == 3  # rows are different samples, not copies


@pytest.mark.parametrize("precision", ["fp32", "int8"])  # int8: per-row scales, exact sums
@pytest.mark.parametrize("cell,layers", CELLS)
@pytest.mark.parametrize("top_k", [0, 5])
def test_batched_rows_equal_each_row_alone(cell, layers, top_k, precision):
    sampler = Sampler(make_net(cell, layers), VOCAB, precision=precision)
    generators = [seed_generator(100 + row) for row in range(4)]
    batch = sampler.generate("ROMEO:", 150, 0.9, top_k, 4, generators)
    alone = [
        sampler.generate("ROMEO:", 150, 0.9, top_k, 1, seed_generator(100 + row))[0]
        for row in range(4)
    ]
    assert batch == alone
    assert len(set(batch)) == 4
    greedy = sampler.generate("ROMEO:", 150, 0, 0, 5)
    assert greedy == sampler.generate("ROMEO:", 150, 0, 0, 1) * 5


def test_never_emits_the_unknown_id():
    net = make_net()
    with torch.no_grad():
        net.head.bias[VOCAB.unk_id] = 1e4  # the model wants nothing but the unknown id
    sampler = Sampler(net, VOCAB)
    for temperature in (0, 1.0, 5.0):
        for text in sampler.generate("A", 300, temperature, 0, 2, seed_generator(0)):
            assert set(text) <= set(VOCAB.chars)


def test_top_k_one_is_greedy_and_top_k_keeps_to_the_k_likeliest():
    net = make_net(scale=1.0)
    sampler = Sampler(net, VOCAB)
    greedy = sampler.generate("ROMEO:", 100, 0)
    assert sampler.generate("ROMEO:", 100, 2.0, 1, 1, seed_generator(3)) == greedy
    (text,) = sampler.generate("ROMEO:", 100, 2.0, 3, 1, seed_generator(3))
    ids = torch.tensor([list(VOCAB.encode("ROMEO:" + text))])
    with torch.no_grad():
        logits = net(ids)[0][0, 5:-1, : VOCAB.unk_id]  # the distribution before each new char
    chosen = logits.gather(1, ids[0, 6:, None])
    ranks = (logits > chosen).sum(1)
    assert int(ranks.max()) < 3
    assert int(ranks.max()) > 0  # with temperature 2 not everything is the top choice


@pytest.mark.parametrize(
    "temperature,top_k,rows", [(1.0, 0, 4000), (0.5, 0, 4000), (1.0, 2, 4000), (1.0, 0, 12000)]
)  # 12000 rows: the noise is big enough to be made in one piece
def test_samples_follow_the_models_distribution(temperature, top_k, rows):
    vocab = Vocab("\nabc")
    net = make_net(vocab=vocab, scale=8.0, seed=1)
    with torch.no_grad():
        logits = net(torch.tensor([list(vocab.encode("ab"))]))[0][0, -1, : vocab.unk_id]
    logits = logits / temperature
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
    expected = torch.softmax(logits, 0)
    texts = Sampler(net, vocab).generate("ab", 1, temperature, top_k, rows, seed_generator(5))
    counts = torch.tensor([sum(t == c for t in texts) for c in vocab.chars], dtype=torch.float)
    assert 0.5 * float((counts / rows - expected).abs().sum()) < 0.04
    assert float(expected.max()) < 0.9  # the test would be weak on a near-certain distribution


def test_on_step_streams_the_same_text():
    sampler = Sampler(make_net("lstm", 2), VOCAB)
    steps = []
    texts = sampler.generate("ROMEO:", 77, 1.0, 0, 2, seed_generator(1), on_step=steps.append)
    assert len(steps) == 77 and all(len(chars) == 2 for chars in steps)
    assert ["".join(s[row] for s in steps) for row in range(2)] == texts
    assert texts == sampler.generate("ROMEO:", 77, 1.0, 0, 2, seed_generator(1))


@pytest.mark.parametrize(
    "prompt,length,temperature,top_k,needle",
    [
        ("ROMEO:", 0, 1.0, 0, "length"),
        ("ROMEO:", -5, 1.0, 0, "length"),
        ("ROMEO:", 10, -0.5, 0, "temperature"),
        ("ROMEO:", 10, 1.0, VOCAB.unk_id + 1, "top_k"),
        ("ROMEO:", 10, 1.0, -1, "top_k"),
        ("", 10, 1.0, 0, "prompt"),
        ("ROMEO: ¿Qué?", 10, 1.0, 0, "'¿', 'Q', 'é'"),
    ],
)
def test_bad_options_give_one_line_errors(prompt, length, temperature, top_k, needle):
    sampler = Sampler(make_net(), VOCAB)
    with pytest.raises(CharRNNError) as err:
        sampler.generate(prompt, length, temperature, top_k)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_sampler_leaves_the_training_net_alone():
    net = make_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Sampler(net, VOCAB).generate("A", 20, 1.0, 0, 2, seed_generator(0))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_epoch_sample_prompt_drops_what_the_corpus_lacks(caplog):
    from types import SimpleNamespace

    from charrnn.callbacks import SampleText

    callback = SampleText(prompt="¿ROMEO?")
    callback.on_fit_start(None, SimpleNamespace(vocab=VOCAB))
    assert callback.prompt == "ROMEO?" and "'¿' not in this corpus" in caplog.text
    callback = SampleText(prompt="¿")
    callback.on_fit_start(None, SimpleNamespace(vocab=VOCAB))
    assert callback.prompt == VOCAB.chars[0]
    with pytest.raises(CharRNNError, match="^callbacks.sample_text.temperature: -1"):
        SampleText(temperature=-1).on_fit_start(None, SimpleNamespace(vocab=VOCAB))

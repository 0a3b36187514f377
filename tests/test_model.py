import math
import warnings

import pytest
import torch

from poetgen.lm.config import ModelConfig
from poetgen.lm.corpus import Streams, Vocab
from poetgen.errors import ConfigError
from poetgen.lm.model import CharLSTM

from conftest import SHARED


@pytest.mark.parametrize("cfg", [dict(), dict(softmax="full"), dict(softmax="full", tie_weights=True),
                                 dict(proj_size=16), dict(softmax="full", tie_weights=True, proj_size=16)])
def test_shapes_and_log_probs(cfg):
    m = CharLSTM(ModelConfig(vocab_size=50, embed_size=8, hidden_size=32, num_layers=2, cutoffs=(20,), **cfg))
    x = torch.randint(0, 50, (7, 3))
    out, (h, c) = m(x, m.zero_state(3))
    P = cfg.get("proj_size") or 32
    assert out.shape == (7, 3, P) and h.shape == (2, 3, P) and c.shape == (2, 3, 32)
    logp = m.log_probs(out)
    assert logp.shape == (7, 3, 50)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(7, 3), atol=1e-5)
    # loss() and log_probs() agree
    y = torch.randint(0, 50, (7, 3))
    nll = -logp.gather(-1, y[..., None]).mean()
    assert torch.allclose(m.loss(out, y), nll, atol=1e-5)


def test_init_forget_bias_and_orthogonal_recurrence():
    m = CharLSTM(ModelConfig(vocab_size=30, hidden_size=16, num_layers=2, cutoffs=()))
    H = 16
    for layer in range(2):
        b = getattr(m.lstm, f"bias_ih_l{layer}") + getattr(m.lstm, f"bias_hh_l{layer}")
        assert torch.all(b[H:2 * H] == 1) and torch.all(b[:H] == 0) and torch.all(b[2 * H:] == 0)
        w = getattr(m.lstm, f"weight_hh_l{layer}")
        for g in range(4):
            block = w[g * H:(g + 1) * H]
            assert torch.allclose(block @ block.T, torch.eye(H), atol=1e-5)


def test_state_carries_across_chunks():
    """Two chunks with the state carried equal one long pass; a reset state does not."""
    torch.manual_seed(0)
    m = CharLSTM(ModelConfig(vocab_size=40, hidden_size=24, embed_size=8, cutoffs=())).eval()
    streams = Streams(torch.randint(0, 40, (4 * 21,)), batch_size=4, bptt=10)
    x1, _ = streams.chunk(0)
    x2, _ = streams.chunk(1)
    whole, _ = m(torch.cat([x1, x2]), m.zero_state(4))
    out1, state = m(x1, m.zero_state(4))
    out2, _ = m(x2, (state[0].detach(), state[1].detach()))
    assert torch.allclose(torch.cat([out1, out2]), whole, atol=1e-6)
    reset, _ = m(x2, m.zero_state(4))
    assert not torch.allclose(reset, out2, atol=1e-3)


def test_weight_drop_masks_recurrent_weights_in_training_only():
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=24, embed_size=8, num_layers=2, cutoffs=(), dropout=0.0)
    plain = CharLSTM(ModelConfig(**cfg))
    dropped = CharLSTM(ModelConfig(**cfg, weight_drop=0.5))
    dropped.load_state_dict(plain.state_dict())
    x = torch.randint(0, 40, (6, 3))
    # At evaluation the weights are used whole: exactly the model without weight drop.
    plain.eval(), dropped.eval()
    assert torch.equal(dropped(x, dropped.zero_state(3))[0], plain(x, plain.zero_state(3))[0])
    # In training each chunk draws a new mask, and gradients reach the stored weights.
    dropped.train()
    a, _ = dropped(x, dropped.zero_state(3))
    b, _ = dropped(x, dropped.zero_state(3))
    # From a zero state the first step uses no recurrent weight, so only the input-to-hidden
    # weights act there: equal first steps show those are never dropped.
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1:], b[1:], atol=1e-4)
    dropped.loss(a, x).backward()
    for layer in range(2):
        assert getattr(dropped.lstm, f"weight_hh_l{layer}").grad.abs().sum() > 0


@pytest.mark.parametrize("weight_drop", [-0.1, 1.0])
def test_weight_drop_out_of_range_is_rejected(weight_drop):
    with pytest.raises(ConfigError, match="weight_drop"):
        CharLSTM(ModelConfig(vocab_size=40, weight_drop=weight_drop))


def test_projection_lstm_runs_on_cpu_without_warnings():
    """oneDNN has no projection LSTM; the model takes ATen's directly instead of warning each run."""
    m = CharLSTM(ModelConfig(vocab_size=40, hidden_size=24, proj_size=8, embed_size=8,
                             weight_drop=0.3, cutoffs=(20,)))
    x = torch.randint(0, 40, (6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for training in (True, False):
            m.train(training)
            out, (h, c) = m(x, m.zero_state(2))
            assert out.shape == (6, 2, 8) and h.shape == (1, 2, 8) and c.shape == (1, 2, 24)


def test_token_bits_add_up_to_the_streamed_evaluation():
    """Per-token bits (bench/bits_by_frequency.py) and evaluate_ids score the same stream."""
    from poetgen.lm.evaluate import PIECE, evaluate_ids, token_bits

    torch.manual_seed(0)
    vocab = Vocab(tuple(chr(0x4e00 + i) for i in range(59)) + ("\ufffd",))
    m = CharLSTM(ModelConfig(vocab_size=60, hidden_size=16, embed_size=8, cutoffs=(20,)))
    ids = torch.randint(0, 60, (PIECE + 37,))  # crosses a piece boundary
    bits = token_bits(m, vocab, ids, kind="running")
    assert bits.shape == (ids.numel(),) and m.training  # the mode is restored
    total = evaluate_ids(m, vocab, [ids[:100], ids[100:]], kind="running")  # a split changes nothing
    assert float(bits.sum()) == pytest.approx(total.bpc * total.chars, rel=1e-5)


def test_evaluating_restores_the_training_mode_even_on_error():
    from poetgen.lm.model import evaluating

    m = CharLSTM(ModelConfig(vocab_size=40, hidden_size=24, embed_size=8, cutoffs=()))
    with pytest.raises(RuntimeError):
        with evaluating(m):
            assert not m.training and not m.lstm.training
            raise RuntimeError("interrupted")
    assert m.training and m.lstm.training
    m.eval()
    with evaluating(m):
        pass
    assert not m.training  # a model in eval mode stays there


# -- reduced-precision inference on a CPU (lm/inference.py) ------------------------------------


def _outputs(model, tokens, precision):
    model.inference_precision = precision
    with torch.no_grad():
        out, (h, c) = model(tokens, model.start_state(tokens.size(1)))
        logp = model.log_probs(out)
    return out, h, c, logp


def _w8a8_kernel() -> bool:
    from poetgen.lm import inference

    return inference.w8a8_kernel()


# w8a8 runs FBGEMM's dynamic int8 product, which PyTorch has on x86 only.
NEEDS_W8A8 = pytest.mark.skipif(not _w8a8_kernel(), reason="this PyTorch build has no FBGEMM "
                                "dynamic int8 product on this CPU (x86 only)")
W8A8 = pytest.param("w8a8", marks=NEEDS_W8A8)


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    # Widths in multiples of 16 where the int8 kernel takes them (gates, projection, head);
    # the clusters' narrow second products (8 and 2 wide) keep bfloat16 copies.
    config = dict(vocab_size=60, embed_size=16, hidden_size=32, cutoffs=(10, 30))
    return CharLSTM(ModelConfig(**{**config, **kw})).eval()


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("rows", [1, 5])
def test_the_gru_step_from_stacked_copies_is_torchs_gru(num_layers, rows):
    """The oracle: nn.GRU. One stacked product of [x h] a step, in float32, gives its outputs
    and state to float32's rounding, over 30 steps from a random state."""
    from poetgen.lm import inference

    torch.manual_seed(3)
    gru = torch.nn.GRU(16, 32, num_layers).eval()
    x, h0 = torch.randn(30, rows, 16), torch.randn(num_layers, rows, 32)
    layers = [inference._GruLayer(gru, i, "fp32") for i in range(num_layers)]
    with torch.no_grad():
        expected, h_expected = gru(x, h0)
        out, h = inference.gru_forward(layers, x, h0)
    assert torch.allclose(out, expected, atol=1e-5) and torch.allclose(h, h_expected, atol=1e-5)


@pytest.mark.parametrize("kind, tolerance", [("bf16", 0.02), ("int8", 0.05),
                                             pytest.param("w8a8", 0.05, marks=NEEDS_W8A8)])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("rows", [1, 7])
def test_a_grus_reduced_copies_follow_its_float32_model(kind, tolerance, num_layers, rows):
    """As the LSTM's below: a GRU model's outputs, state and log-probabilities through its
    reduced copies stay within their rounding of float32's."""
    model = _small(cell="gru", num_layers=num_layers)
    tokens = torch.randint(0, 60, (40, rows))
    (out, h, _, logp), (out_r, h_r, _, logp_r) = (_outputs(model, tokens, "fp32"),
                                                  _outputs(model, tokens, kind))
    for a, b in ((out, out_r), (h, h_r), (logp, logp_r)):
        assert a.shape == b.shape and b.dtype == torch.float32 and not torch.equal(a, b)
        assert torch.allclose(a, b, atol=tolerance), (a - b).abs().max()


@pytest.mark.parametrize("kind, tolerance", [("bf16", 0.02), ("int8", 0.05),
                                             pytest.param("w8a8", 0.05, marks=NEEDS_W8A8)])
@pytest.mark.parametrize("proj_size, num_layers", [(0, 1), (16, 1), (16, 2)])
@pytest.mark.parametrize("rows", [1, 7])
def test_reduced_copies_follow_the_float32_model(kind, tolerance, proj_size, num_layers, rows):
    """Only the products' operands are rounded: outputs, states and the adaptive softmax's
    log-probabilities stay within the rounding of float32's, over 40 steps and every layer."""
    model = _small(proj_size=proj_size, num_layers=num_layers)
    tokens = torch.randint(0, 60, (40, rows))
    exact, reduced = _outputs(model, tokens, "fp32"), _outputs(model, tokens, kind)
    for a, b in zip(exact, reduced):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert not torch.equal(a, b)  # the reduced path ran
        assert torch.allclose(a, b, atol=tolerance), (a - b).abs().max()
    assert torch.allclose(reduced[3].exp().sum(-1), torch.ones(40, rows), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", W8A8])
def test_log_prob_of_one_character_is_log_probs_column(precision):
    """The same numbers, whether the character is in the adaptive softmax's shortlist (the head
    alone is computed) or in a cluster (the whole distribution is)."""
    model = _small(proj_size=16)
    model.inference_precision = precision
    tokens = torch.randint(0, 60, (6, 3))
    with torch.no_grad():
        out, _ = model(tokens, model.start_state(3))
        logp = model.log_probs(out)
        for char in (0, 9, 10, 45, 59):  # shortlist (cutoffs 10, 30), both clusters
            assert torch.equal(model.log_prob_of(out, char), logp[..., char])


@pytest.mark.parametrize("head_bias", [False, True])
def test_the_adaptive_softmax_assembled_from_copies_is_torchs(head_bias):
    """The stacked first products and the per-cluster log-softmaxes give what
    nn.AdaptiveLogSoftmaxWithLoss.log_prob gives; float32 copies make it exact up to summation
    order, so a misplaced cluster or a wrong offset cannot hide in rounding."""
    from poetgen.lm import inference

    torch.manual_seed(0)
    adaptive = torch.nn.AdaptiveLogSoftmaxWithLoss(24, 70, [10, 25, 50], div_value=2.0,
                                                   head_bias=head_bias)
    x = torch.randn(5, 24)
    copies = inference.adaptive_copies().get(adaptive, "fp32")
    with torch.no_grad():
        assert torch.allclose(inference.adaptive_log_prob(copies, x), adaptive.log_prob(x),
                              atol=1e-5)


@pytest.mark.parametrize("in_features, div_value", [(24, 2.0), (512, 4.0)])
def test_the_clusters_projections_are_stacked_where_a_kernel_reads_them_in_place(in_features,
                                                                                 div_value):
    """Each cluster's share of the stacked first product starts a multiple of 32 bfloat16 (64
    bytes) in, so a one-row product hands it to the second product without a copy; the rows
    that pad it there are zero, and the head follows the clusters."""
    from poetgen.lm import inference

    adaptive = torch.nn.AdaptiveLogSoftmaxWithLoss(in_features, 5000, [1000, 3000, 4000],
                                                   div_value=div_value)
    copies = inference._AdaptiveCopies(adaptive, "fp32")
    weight = copies.first.weight
    edges = [0] + [b for _, b in copies.projected]
    for (a, b), tail in zip(copies.projected, adaptive.tail):
        assert a % 32 == 0 and torch.equal(weight[a:b], tail[0].weight)
    for stop, start in zip(edges[1:], [a for a, _ in copies.projected[1:]] + [copies.head_start]):
        assert not weight[stop:start].any()  # padding
    assert torch.equal(weight[copies.head_start:], adaptive.head.weight)
    # ...so a one-row product's share of each cluster is an aligned view the kernel reads as is.
    with torch.no_grad():
        first = inference._AdaptiveCopies(adaptive, "int8").first(torch.randn(1, in_features))
    assert first.dtype == torch.bfloat16 and first.data_ptr() % 64 == 0
    assert all(first[:, a:b].data_ptr() % 64 == 0 for a, b in copies.projected)


@pytest.mark.parametrize("kind", ["bf16", "int8", W8A8])
def test_held_copies_are_looked_up_once_in_a_sampling_loop_and_checked_again_after(kind):
    """Inside sampling(model) the copies are checked at their first use only (each check cost
    ~18 µs a step); a change made after it is not seen until the block ends, and then it is."""
    from poetgen.lm.model import sampling

    model = _small(seed=3, proj_size=16)
    tokens = torch.randint(0, 60, (5, 2))

    def change_weights():
        with torch.no_grad():
            model.lstm.weight_hh_l0.mul_(-2)
            model.adaptive.head.weight.mul_(3)

    def followed(after, before):  # the copies follow the new weights, not the old
        exact = _outputs(model, tokens, "fp32")
        return all((a - b).abs().max() > 10 * (a - e).abs().max()
                   for a, b, e in zip(after, before, exact))

    with sampling(model):
        before = _outputs(model, tokens, kind)
        change_weights()
        held = _outputs(model, tokens, kind)
    assert all(torch.equal(a, b) for a, b in zip(before, held))
    assert followed(_outputs(model, tokens, kind), before)
    # Blocks that overlap rather than nest (two threads on one model), and one that raises:
    # checking resumes when the last has ended, not when the first has.
    first, second = sampling(model), sampling(model)
    first.__enter__()
    second.__enter__()
    before = _outputs(model, tokens, kind)
    first.__exit__(None, None, None)
    change_weights()
    assert all(torch.equal(a, b) for a, b in zip(before, _outputs(model, tokens, kind)))
    second.__exit__(None, None, None)
    assert followed(_outputs(model, tokens, kind), before)
    with pytest.raises(RuntimeError), sampling(model):
        before = _outputs(model, tokens, kind)
        raise RuntimeError
    change_weights()
    assert followed(_outputs(model, tokens, kind), before)


@pytest.mark.parametrize("shape", [(7, 16), (64, 48), (3, 128)])
def test_int8_copies_against_their_own_dequantized_weights(shape):
    """The oracle is the arithmetic written out: q = round(W / s) per row with s = max|W_row| / 127
    (so each row reaches ±127 and no weight moves by more than s / 2), and the kernel's product
    is x (q s)ᵀ up to bfloat16's rounding of x and of the result."""
    from poetgen.lm.inference import Product

    torch.manual_seed(1)
    w = torch.randn(*shape) * torch.linspace(0.01, 3, shape[0])[:, None]  # rows of all scales
    p = Product(w, "int8")
    q, s = p.weight.float(), p.scale.float()[:, None]
    exact_s = w.abs().amax(1, keepdim=True) / 127
    assert p.weight.dtype == torch.int8 and (q.abs().amax(1) == 127).all()
    assert ((q * exact_s - w).abs() <= exact_s * 0.5001).all()
    assert torch.allclose(s, exact_s, rtol=2**-8)  # the scale kept in bfloat16
    x = torch.randn(4, shape[1])
    want = x.bfloat16().double() @ (q.double() * s.double()).T
    got = p(x.bfloat16()).double()
    assert torch.allclose(got, want, rtol=0.02, atol=0.02 * want.abs().max().item())
    # A column slice of a one-row product is contiguous but not aligned: the kernel must get a
    # copy, not the view (it crashed on one).
    wide = torch.randn(1, shape[1] + 3).bfloat16()
    assert torch.equal(p(wide[:, 3:]), p(wide[:, 3:].clone()))


@NEEDS_W8A8
@pytest.mark.parametrize("shape, rows", [((7, 16), 1), ((64, 48), 5), ((3, 130), 64)])
def test_w8a8_copies_against_the_arithmetic_written_out(shape, rows):
    """The oracle: the weights as int8 copies make them (q = round(W / s), s = max|W_row| / 127),
    the activations quantized as PyTorch's dynamic quantization does, to 7 bits (0..127) with
    one scale and zero point for the whole matrix, its range widened to take 0; the product is
    their dequantized values' (float64 here; the kernel sums integers exactly)."""
    from poetgen.lm.inference import Product

    torch.manual_seed(3)
    w = torch.randn(*shape) * torch.linspace(0.01, 3, shape[0])[:, None]
    p = Product(w, "w8a8")
    assert p.kind == "w8a8" and p.input_dtype == torch.float32
    x = torch.randn(rows, shape[1]) * 2 + 0.5
    s_w = (w.abs().amax(1, keepdim=True) / 127).double()
    q_w = torch.round(w.double() / s_w).clamp(-127, 127)
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    s_x = (high - low) / 127
    zero = round(-low / s_x)
    q_x = (torch.round(x.double() / s_x) + zero).clamp(0, 127)
    want = ((q_x - zero) * s_x) @ (q_w * s_w).T
    got = p(x)
    assert got.dtype == torch.float32 and got.shape == (rows, shape[0])
    err = (got.double() - want).abs().max().item()
    assert err <= 1e-4 * want.abs().max().item(), err
    # ...which is not float32's product: the activations really were quantized.
    assert not torch.allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)


def test_bfloat16_copies_are_prepacked_and_multiply_as_f_linear_does():
    """oneDNN's prepacked layout (PyTorch's own operators for it, not public API: a build
    without them falls back to F.linear, and this test says so) gives F.linear's product."""
    import torch.nn.functional as F

    from poetgen.lm.inference import Product

    torch.manual_seed(2)
    w, x = torch.randn(48, 32), torch.randn(5, 32)
    p = Product(w, "bf16")
    assert p.packed
    want = F.linear(x.bfloat16(), w.bfloat16()).float()
    assert torch.allclose(p(x).float(), want, rtol=2**-7, atol=1e-3)
    row = torch.randn(1, 40).bfloat16()
    assert torch.equal(p(row[:, 8:]), p(row[:, 8:].clone()))  # an unaligned view: as its copy


@pytest.mark.parametrize("native", [True, False])
def test_where_w8a8_has_no_kernel_the_next_fastest_copy_serves(native, monkeypatch):
    from poetgen.lm import inference
    from poetgen.lm.inference import Product

    monkeypatch.setattr(inference, "native_bf16", lambda: native)
    monkeypatch.setattr(inference, "w8a8_kernel", lambda: False)
    w, x = torch.randn(8, 32), torch.randn(3, 32)
    p = Product(w, "w8a8")
    assert p.kind == ("bf16" if native else "fp32")
    assert torch.allclose(p(x.to(p.input_dtype)).float(), x @ w.T, atol=0.1)
    # The projection and the softmax fall back as the gates do (float32 beside w8a8's gates
    # only where those are w8a8): no bfloat16 gates fed by a float32 projection.
    model = _small(seed=6, proj_size=16)
    layer = model._rnn_copies.get(model.lstm, "w8a8")
    copies = model._adaptive_copies.get(model.adaptive, "w8a8")
    if native:
        assert {layer[0].gates.kind, layer[0].project.kind, copies.first.kind} == {"bf16"}
    else:  # float32 gates: nn.LSTM's own serves (rnn_copies)
        assert layer is None and copies.first.kind == "fp32"


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("why", ["width", "no kernel"])
def test_where_int8_cannot_run_the_next_fastest_copy_serves(why, native, monkeypatch):
    """The kernel crashed the process on inner widths not a multiple of 16 (20, 24, 40); a
    PyTorch build without it must not fail at the first product. bfloat16 serves instead where
    the CPU has it natively, float32 elsewhere."""
    from poetgen.lm import inference
    from poetgen.lm.inference import INT8_BLOCK, Product

    monkeypatch.setattr(inference, "native_bf16", lambda: native)
    if why == "no kernel":
        monkeypatch.setattr(inference, "int8_kernel", lambda: False)
    w = torch.randn(8, INT8_BLOCK + 4 if why == "width" else INT8_BLOCK)
    p = Product(w, "int8")
    assert p.weight.dtype == (torch.bfloat16 if native else torch.float32) and p.scale is None
    x = torch.randn(3, w.size(1))
    assert torch.allclose(p(x.bfloat16()).float(), x @ w.T, atol=0.1)


def test_an_lstm_int8_cannot_serve_runs_its_own_float32_where_bfloat16_is_not_native(monkeypatch):
    """Gates 16 + 20 = 36 wide: the int8 kernel cannot take them, and without native bfloat16
    its copies would be float32 weights behind bfloat16-rounded inputs; nn.LSTM runs instead."""
    from poetgen.lm import inference

    model = _small(hidden_size=20)
    tokens = torch.randint(0, 60, (8, 1))
    monkeypatch.setattr(inference, "native_bf16", lambda: False)
    exact, asked = _outputs(model, tokens, "fp32"), _outputs(model, tokens, "int8")
    assert all(torch.equal(a, b) for a, b in zip(exact[:3], asked[:3]))  # output, h, c
    # Where bfloat16 is native its copies serve. (A model of its own: a process's answer to
    # native_bf16() never changes, and the copies made under the first are kept.)
    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    assert not torch.equal(_outputs(_small(hidden_size=20), tokens, "int8")[0], exact[0])


def test_a_model_copied_inside_a_sampling_block_checks_its_own_copies():
    import copy

    from poetgen.lm.model import sampling

    model = _small(seed=5, proj_size=16)
    tokens = torch.randint(0, 60, (5, 1))
    with sampling(model):
        _outputs(model, tokens, "int8")
        twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lstm.weight_hh_l0.mul_(-2)
    with sampling(model):  # held again: the original's copies stay the original's
        assert torch.allclose(_outputs(twin, tokens, "int8")[0], _outputs(twin, tokens, "fp32")[0],
                              atol=0.05)


def test_auto_takes_int8_for_few_rows_then_bf16_where_native_else_w8a8_else_fp32(monkeypatch):
    """int8 for up to INT8_MAX_ROWS rows wherever the vectorized int8 kernel runs (x86 AVX2 or
    AVX-512, with or without native bfloat16); above that bf16 with native bfloat16, else w8a8
    on those x86 CPUs where PyTorch has FBGEMM's dynamic product, else float32."""
    from poetgen.lm import inference

    rows = (1, inference.INT8_MAX_ROWS, inference.INT8_MAX_ROWS + 1, 64)
    for x86, native, dynamic, want in [(True, True, True, ["int8", "int8", "bf16", "bf16"]),
                                       (True, False, True, ["int8", "int8", "w8a8", "w8a8"]),
                                       (True, False, False, ["int8", "int8", "fp32", "fp32"]),
                                       (False, True, True, ["bf16"] * 4),
                                       (False, False, True, ["fp32"] * 4)]:
        monkeypatch.setattr(inference, "x86_simd", lambda: x86)
        monkeypatch.setattr(inference, "int8_kernel", lambda: True)
        monkeypatch.setattr(inference, "native_bf16", lambda: native)
        monkeypatch.setattr(inference, "w8a8_kernel", lambda: dynamic)
        assert [inference.product_kind("auto", n) for n in rows] == want, (x86, native, dynamic)
    forced = ("fp32", "bf16", "int8", "w8a8")
    assert [inference.product_kind(p, 1) for p in forced] == list(forced)
    # ...and the model follows: with neither, auto is float32 exactly; with int8 alone, a poem
    # written as one row takes it and a batch of five does not.
    monkeypatch.setattr(inference, "w8a8_kernel", lambda: False)
    model = _small(proj_size=16)
    for batch, same in [(1, False), (5, True)]:
        tokens = torch.randint(0, 60, (10, batch))
        monkeypatch.setattr(inference, "int8_fast", lambda: False)
        exact = _outputs(model, tokens, "fp32")
        assert all(torch.equal(a, b) for a, b in zip(_outputs(model, tokens, "auto"), exact))
        monkeypatch.setattr(inference, "int8_fast", lambda: True)
        auto = _outputs(model, tokens, "auto")
        assert all(torch.equal(a, b) for a, b in zip(auto, exact)) == same


@NEEDS_W8A8
def test_w8a8_quantizes_the_gates_input_alone(monkeypatch):
    """Under w8a8 only the gates' product quantizes its activations: the projection (whose input
    lost 0.015 bpc so) and the softmax keep float32 copies, and the float32 softmax gives what
    fp32 gives from the same LSTM output. On a CPU without native bfloat16, auto takes w8a8 for
    a batch of five and int8 for one row."""
    from poetgen.lm import inference

    model = _small(proj_size=16)
    layers = model._rnn_copies.get(model.lstm, "w8a8")
    assert layers[0].gates.kind == "w8a8" and layers[0].project.kind == "fp32"
    copies = model._adaptive_copies.get(model.adaptive, "w8a8")
    assert all(p.kind == "fp32" for p in (copies.first, *copies.seconds))
    tokens = torch.randint(0, 60, (10, 5))
    out, _, _, logp = _outputs(model, tokens, "w8a8")
    model.inference_precision = "fp32"
    with torch.no_grad():
        assert torch.allclose(model.log_probs(out), logp, atol=1e-5)
    monkeypatch.setattr(inference, "native_bf16", lambda: False)
    monkeypatch.setattr(inference, "x86_simd", lambda: True)
    for batch, kind in [(5, "w8a8"), (1, "int8")]:
        tokens = torch.randint(0, 60, (10, batch))
        auto, forced = _outputs(model, tokens, "auto"), _outputs(model, tokens, kind)
        # output, h, c (the softmax reads all 10 steps at once: 10 rows, w8a8's either way)
        assert all(torch.equal(a, b) for a, b in zip(auto[:3], forced[:3])), (batch, kind)


# proj_size 8 leaves the adaptive softmax's last cluster 0 wide (8 // 16): an edge case the
# copies must take, which PyTorch's initialisation warns about.
ZERO_WIDE_CLUSTER = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


@ZERO_WIDE_CLUSTER
@pytest.mark.parametrize("kind", ["bf16", "int8", W8A8])
def test_reduced_copies_follow_weight_updates(kind):
    model = _small(seed=1, proj_size=8)
    tokens = torch.randint(0, 60, (10, 3))
    before = _outputs(model, tokens, kind)[0]
    with torch.no_grad():  # an optimizer step changes the weights in place
        model.lstm.weight_ih_l0.mul_(-3)
    after, exact = _outputs(model, tokens, kind)[0], _outputs(model, tokens, "fp32")[0]
    # Stale copies would give `before` again, exactly; new ones follow the new weights.
    assert (after - before).abs().max() > 10 * (after - exact).abs().max()
    model.lstm = torch.nn.LSTM(16, 32, proj_size=8)  # a new module: its weights, not the old ones
    replaced, exact = _outputs(model, tokens, kind)[0], _outputs(model, tokens, "fp32")[0]
    assert (replaced - after).abs().max() > 10 * (replaced - exact).abs().max()
    logp_before = _outputs(model, tokens, kind)[3]
    with torch.no_grad():  # the softmax's copies too
        model.adaptive.head.weight.mul_(2)
    logp_after, logp_exact = _outputs(model, tokens, kind)[3], _outputs(model, tokens, "fp32")[3]
    assert (logp_after - logp_before).abs().max() > 10 * (logp_after - logp_exact).abs().max()


@ZERO_WIDE_CLUSTER
def test_reduced_copies_see_new_storage_and_take_inference_mode_weights_as_fixed():
    model = _small(seed=4, proj_size=8)
    tokens = torch.randint(0, 60, (10, 2))
    before = _outputs(model, tokens, "int8")[0]
    model.lstm.weight_hh_l0.data = model.lstm.weight_hh_l0.data * -2  # new storage, same version
    after, exact = _outputs(model, tokens, "int8")[0], _outputs(model, tokens, "fp32")[0]
    assert (after - before).abs().max() > 10 * (after - exact).abs().max()
    with torch.inference_mode():  # its tensors have no version counter
        frozen = _small(seed=4, proj_size=8)
        out, exact = _outputs(frozen, tokens, "int8")[0], _outputs(frozen, tokens, "fp32")[0]
    assert torch.allclose(out, exact, atol=0.05) and not torch.equal(out, exact)


def test_reduced_copies_are_not_fooled_by_a_new_storage_at_an_old_address():
    """Two `.data` swaps: the third storage could land where the first was freed, with the same
    version, and pass for it; the copies keep the first alive, so it cannot (PyTorch's allocator
    reused the address in about 1 trial in 5 before they did)."""
    tokens = torch.randint(0, 60, (10, 1))
    for trial in range(25):
        model = _small(seed=trial, proj_size=16)
        _outputs(model, tokens, "int8")  # copies of the first storage
        weight = model.lstm.weight_hh_l0
        weight.data = weight.data * -2  # a second storage; the first is no longer the weight's
        weight.data = weight.data * -2.5  # a third
        reduced, exact = _outputs(model, tokens, "int8")[0], _outputs(model, tokens, "fp32")[0]
        assert torch.allclose(reduced, exact, atol=0.02), trial


@ZERO_WIDE_CLUSTER
def test_reduced_copies_are_for_float32_inference_only():
    model = _small(seed=2, proj_size=8).double()  # a float64 model: its products stay float64
    tokens = torch.randint(0, 60, (10, 5))
    assert _outputs(model, tokens, "bf16")[0].dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, tokens, "int8"),
                                                 _outputs(model, tokens, "fp32")))
    model = model.float()
    model.train()  # training (with gradients) never takes them
    model.inference_precision = "int8"
    out, _ = model(tokens, model.start_state(tokens.size(1)))
    assert out.requires_grad


@pytest.mark.skipif(not (SHARED / "corpora" / "tang_val.txt").exists(),
                    reason="needs ../shared/corpora/tang_val.txt")
def test_reduced_copies_score_the_bundled_model_as_float32_does():
    """The quality check of the faster paths: 120 poems of tang_val read by the bundled model
    (on the whole file, bench/precision_bpc.py: float32 5.84447, bf16 5.84449, int8 5.84409,
    w8a8 5.84487)."""
    from poetgen.lm.checkpoint import BUNDLED, load_checkpoint
    from poetgen.lm.evaluate import evaluate_ids

    ck = load_checkpoint(BUNDLED)
    lines = (SHARED / "corpora" / "tang_val.txt").read_text(encoding="utf-8").splitlines()[:120]
    ids = torch.tensor(ck.vocab.encode("\n".join(lines) + "\n"))
    bpc, drawn = {}, {}
    kinds = ("bf16", "int8", "w8a8") if _w8a8_kernel() else ("bf16", "int8")
    for precision in ("fp32", *kinds):
        ck.model.inference_precision = precision
        bpc[precision] = evaluate_ids(ck.model, ck.vocab, [ids], kind="lines").bpc
        drawn[precision] = _bits_as_sampling_sees_them(ck.model, ck.vocab, lines[:40])
    for kind in kinds:
        assert bpc[kind] != bpc["fp32"] and abs(bpc[kind] - bpc["fp32"]) < 0.002, bpc
        assert drawn[kind] != drawn["fp32"] and abs(drawn[kind] - drawn["fp32"]) < 0.002, drawn


def _bits_as_sampling_sees_them(model, vocab, lines):
    """Bits per character of `lines`, each from the start state, scored by model.log_probs,
    the whole distribution sampling draws from (the softmax's copies too, which `eval`'s
    target-only path does not use). One batch, padded; the padding is not scored."""
    rows = [torch.tensor(vocab.encode(line + "\n")) for line in lines]
    x = torch.nn.utils.rnn.pad_sequence(rows)  # (T, B)
    scored = torch.arange(x.size(0))[:, None] < torch.tensor([len(r) for r in rows])[None]
    with torch.no_grad():
        outputs, _ = model(x, model.start_state(len(rows)))
        inputs = torch.cat([model.start_output(len(rows))[None], outputs[:-1]])
        logp = model.log_probs(inputs).gather(-1, x[..., None]).squeeze(-1)
    return -float(logp[scored].sum()) / int(scored.sum()) / math.log(2)


def test_overlapping_evaluation_and_sampling_blocks_restore_what_was_there_before_the_first():
    """Blocks from two threads overlap without nesting: A opens, B opens, A closes, B closes.
    Each saving and restoring for itself, A's close put the model back in training mode (and
    oneDNN back on) under B, and B's left it in evaluation mode (oneDNN off) for good."""
    from poetgen.lm.model import evaluating, stepwise

    model = _small(seed=0).train()
    onednn_before = torch.backends.mkldnn.enabled
    a, b = evaluating(model), stepwise()
    first, second = evaluating(model), stepwise()
    for block in (a, b, first, second):
        block.__enter__()
    for block in (a, b):
        block.__exit__(None, None, None)
    assert not model.training and torch.backends.mkldnn.enabled is False  # still held
    for block in (first, second):
        block.__exit__(None, None, None)
    assert model.training and torch.backends.mkldnn.enabled == onednn_before


def test_two_threads_sample_one_training_model_as_each_would_alone():
    import sys
    import threading

    from poetgen.lm.corpus import Vocab
    from poetgen.lm.sample import generate

    vocab = Vocab.build("春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n")
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=16, hidden_size=32,
                                 cutoffs=(), dropout=0.5, newline_id=vocab.newline_id)).train()
    texts = lambda n: [s.text for s in generate(model, vocab, n=n, max_chars=60, seed=7)]  # noqa: E731
    alone = {n: texts(n) for n in (1, 3)}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch every few operations: the blocks interleave
    try:
        for _ in range(10):
            together = {}
            threads = [threading.Thread(target=lambda n=n: together.update({n: texts(n)}))
                       for n in (1, 3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert together == alone and model.training
    finally:
        sys.setswitchinterval(interval)

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


# -- bfloat16 inference (lm/bf16.py) -----------------------------------------------------------


def _outputs(model, tokens, precision):
    model.inference_precision = precision
    with torch.no_grad():
        out, (h, c) = model(tokens, model.start_state(tokens.size(1)))
    return out, h, c


@pytest.mark.parametrize("proj_size, num_layers", [(0, 1), (16, 1), (16, 2)])
def test_bf16_inference_follows_the_float32_lstm(proj_size, num_layers):
    """Only the products' operands are rounded (8 bits of mantissa): outputs and states stay
    within bfloat16's rounding of float32's, over 40 steps and every layer."""
    from poetgen.lm.bf16 import MIN_ROWS

    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=50, embed_size=12, hidden_size=32, num_layers=num_layers,
                                 proj_size=proj_size, softmax="full")).eval()
    tokens = torch.randint(0, 50, (40, MIN_ROWS + 3))
    exact, bf16 = _outputs(model, tokens, "fp32"), _outputs(model, tokens, "bf16")
    for a, b in zip(exact, bf16):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert not torch.equal(a, b)  # the bfloat16 path ran
        assert torch.allclose(a, b, atol=0.02), (a - b).abs().max()


def test_bf16_copies_follow_weight_updates_and_few_rows_stay_float32():
    from poetgen.lm.bf16 import MIN_ROWS

    torch.manual_seed(1)
    model = CharLSTM(ModelConfig(vocab_size=30, embed_size=8, hidden_size=16, proj_size=8,
                                 softmax="full")).eval()
    tokens = torch.randint(0, 30, (10, MIN_ROWS))
    before = _outputs(model, tokens, "bf16")[0]
    with torch.no_grad():  # an optimizer step changes the weights in place
        model.lstm.weight_ih_l0.mul_(-3)
    after, exact = _outputs(model, tokens, "bf16")[0], _outputs(model, tokens, "fp32")[0]
    # Stale copies would give `before` again, exactly; new ones follow the new weights.
    assert (after - before).abs().max() > 10 * (after - exact).abs().max()
    model.lstm = torch.nn.LSTM(8, 16, proj_size=8)  # a new module: its weights, not the old ones
    replaced, exact = _outputs(model, tokens, "bf16")[0], _outputs(model, tokens, "fp32")[0]
    assert (replaced - after).abs().max() > 10 * (replaced - exact).abs().max()
    few = tokens[:, : MIN_ROWS - 1]  # below MIN_ROWS even "bf16" takes float32's exact path
    assert torch.equal(_outputs(model, few, "bf16")[0], _outputs(model, few, "fp32")[0])
    double = model.double()  # nor a float64 model: its products stay float64
    assert _outputs(double, tokens, "bf16")[0].dtype == torch.float64
    assert torch.equal(_outputs(double, tokens, "bf16")[0], _outputs(double, tokens, "fp32")[0])
    model = double.float()
    model.train()  # training (with gradients) never takes it
    model.inference_precision = "bf16"
    out, _ = model(tokens, model.start_state(tokens.size(1)))
    assert out.requires_grad


@pytest.mark.skipif(not (SHARED / "corpora" / "tang_val.txt").exists(),
                    reason="needs ../shared/corpora/tang_val.txt")
def test_bf16_scores_the_bundled_model_as_float32_does():
    """The quality check of the faster path: 300 poems of tang_val read by the bundled model,
    bfloat16 products against float32 (on the whole file: 5.84449 against 5.84447)."""
    from poetgen.lm.checkpoint import BUNDLED, load_checkpoint
    from poetgen.lm.evaluate import evaluate_ids

    ck = load_checkpoint(BUNDLED)
    lines = (SHARED / "corpora" / "tang_val.txt").read_text(encoding="utf-8").splitlines()[:300]
    ids = torch.tensor(ck.vocab.encode("\n".join(lines) + "\n"))
    bpc = {}
    for precision in ("fp32", "bf16"):
        ck.model.inference_precision = precision
        bpc[precision] = evaluate_ids(ck.model, ck.vocab, [ids], kind="lines").bpc
    assert bpc["bf16"] != bpc["fp32"] and abs(bpc["bf16"] - bpc["fp32"]) < 0.001

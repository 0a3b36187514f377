import warnings

import pytest
import torch

from poetgen.lm.config import ModelConfig
from poetgen.lm.corpus import Streams, Vocab
from poetgen.errors import ConfigError
from poetgen.lm.model import CharLSTM


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

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poetgen.lm.checkpoint import load_checkpoint
from poetgen.errors import ConfigError
from poetgen.lm.sample import IMPOSSIBLE, any_true, as_bool, as_float, filter_logits, forbid, generate, sample_next


@pytest.fixture(scope="module")
def ck(tiny_run):
    return load_checkpoint(tiny_run / "best.safetensors")


def test_seed_reproducible_and_batch_independent_of_n(ck):
    a = generate(ck.model, ck.vocab, n=3, max_chars=40, seed=5)
    b = generate(ck.model, ck.vocab, n=3, max_chars=40, seed=5)
    c = generate(ck.model, ck.vocab, n=3, max_chars=40, seed=6)
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.text for s in a] != [s.text for s in c]
    assert all(s.seed == 5 for s in a)


def test_stops_at_end_of_poem_and_respects_max_chars(ck):
    for s in generate(ck.model, ck.vocab, n=8, max_chars=200, seed=1):
        assert "\n" not in s.text and s.num_chars <= 200
    short = generate(ck.model, ck.vocab, n=4, max_chars=3, seed=1, stop_at_newline=False)
    assert all(len(s.text) == 3 for s in short)


@pytest.mark.parametrize("stop_at_newline", [True, False])
def test_each_samples_score_and_length_are_the_models_reading_of_its_text(ck, stop_at_newline):
    """The loop works out where each text ended and what it scored once, after drawing; the
    oracle reads each text back through the model (teacher forcing) and sums the log-probabilities
    of its characters, the ending newline included where the text stopped at one."""
    from poetgen.lm.model import evaluating

    samples = generate(ck.model, ck.vocab, n=6, max_chars=30, prime="春", seed=3,
                       stop_at_newline=stop_at_newline)
    ended = 0
    for s in samples:
        written = s.text[1:] + ("\n" if s.num_chars > len(s.text) - 1 else "")
        ended += written.endswith("\n")
        assert s.num_chars == len(written)
        ids = torch.tensor(ck.vocab.encode("春" + written))
        with torch.no_grad(), evaluating(ck.model):
            out, _ = ck.model(ids[:-1, None], ck.model.start_state(1))
            logp = torch.cat([ck.model.log_probs(ck.model.start_output(1))[None], ck.model.log_probs(out)])
        want = logp[1:, 0].gather(1, ids[1:, None]).sum().item()
        assert s.logprob == pytest.approx(want, rel=1e-4, abs=1e-3)
    assert (ended > 0) == stop_at_newline  # the tiny model ends some texts within 30 characters


def test_a_vocabulary_without_a_newline_writes_to_max_chars():
    """Text learned without line breaks has no newline to stop at: every sample runs to
    max_chars, whether or not stopping at a newline was asked for."""
    from poetgen.lm.config import ModelConfig
    from poetgen.lm.corpus import Vocab
    from poetgen.lm.model import CharLSTM

    vocab = Vocab(tuple("abcdefgh") + ("\ufffd",))
    assert vocab.newline_id is None
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=8, hidden_size=16)).eval()
    for stop in (True, False):
        samples = generate(model, vocab, n=3, max_chars=25, seed=1, stop_at_newline=stop)
        assert [len(s.text) for s in samples] == [25] * 3 and all(s.num_chars == 25 for s in samples)


def test_prime_is_kept_and_top_k_1_is_greedy(ck):
    a = generate(ck.model, ck.vocab, n=2, max_chars=12, prime="春江", top_k=1, seed=1)
    b = generate(ck.model, ck.vocab, n=2, max_chars=12, prime="春江", top_k=1, seed=2)
    assert a[0].text.startswith("春江") and a[0].text == a[1].text == b[0].text


def test_never_writes_unknown_token(ck):
    text = "".join(s.text for s in generate(ck.model, ck.vocab, n=16, max_chars=60, temperature=5.0, seed=0))
    assert "\ufffd" not in text


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(temperature=-1), dict(temperature=float("nan")),
                                    dict(top_k=-1), dict(top_p=0), dict(top_p=1.5), dict(max_chars=0)])
def test_bad_sampling_arguments(ck, kwargs):
    with pytest.raises(ConfigError):
        generate(ck.model, ck.vocab, **kwargs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=30), st.integers(0, 40))
def test_top_k_keeps_the_k_likeliest(values, k):
    logits = torch.tensor([values])
    kept = torch.isfinite(filter_logits(logits, top_k=k))[0]
    if k == 0 or k >= len(values):
        assert kept.all()
        return
    kth = torch.topk(logits[0], k).values[-1]
    assert torch.equal(kept, logits[0] >= kth)  # the k likeliest, and any tied with the k-th


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=30), st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_holding_p(values, p):
    """Nucleus sampling: the kept characters are the likeliest ones, hold at least p of the
    probability, and dropping the least likely of them would fall below p (the set is minimal)."""
    logits = torch.tensor([values])
    kept = torch.isfinite(filter_logits(logits, top_p=p))[0]
    probs = torch.softmax(logits[0].double(), -1)
    mass, least = probs[kept].sum(), probs[kept].min()
    assert mass >= p - 1e-6
    assert mass - least < p + 1e-6
    assert (probs[~kept] <= least + 1e-12).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 40), st.floats(0.2, 3.0), st.integers(0, 2**31 - 1),
       st.integers(0, 5), st.sampled_from([1.0, 0.9, 0.5]))
def test_forbidding_by_arithmetic_draws_what_masked_fill_draws(rows, size, temperature, seed,
                                                               top_k, top_p):
    """forbid() adds IMPOSSIBLE where masked_fill wrote -inf: the probabilities over the allowed
    characters come out bit for bit the same, after top-k and top-p too, and a forbidden
    character is never drawn."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(rows, size, generator=g) * 4, -1)
    allowed = torch.rand(rows, size, generator=g) < 0.5
    allowed[torch.arange(rows), torch.randint(0, size, (rows,), generator=g)] = True
    by_fill = (logp / temperature).masked_fill(~allowed, float("-inf"))
    by_add = forbid(logp / temperature, allowed)
    assert torch.equal(by_add[allowed], by_fill[allowed]) and (by_add[~allowed] == IMPOSSIBLE).all()
    assert torch.equal(torch.softmax(filter_logits(by_fill, top_k, top_p), -1),
                       torch.softmax(filter_logits(by_add, top_k, top_p), -1))
    draws = sample_next(logp, temperature, torch.Generator().manual_seed(seed), top_k, top_p, allowed)
    assert allowed[torch.arange(rows), draws].all()


@pytest.mark.parametrize("shape, dim", [((16, 5488), -1), ((3, 4, 50), 1), ((7,), 0), ((2, 0), -1),
                                        ((0, 3), -1)])
def test_bool_mask_helpers_agree_with_torch(shape, dim):
    mask = torch.rand(shape) < 0.3
    assert torch.equal(as_float(mask), mask.float())
    assert torch.equal(any_true(mask, dim), mask.any(dim))
    counts = as_float(mask) @ as_float(torch.rand(shape[-1], 5) < 0.5)  # products of 0/1 masks
    assert torch.equal(as_bool(counts), counts > 0) and as_bool(counts).dtype == torch.bool


def test_a_forbidden_character_stays_forbidden_at_any_temperature():
    """IMPOSSIBLE is float32's lowest value, so that even at a temperature that makes the
    allowed logits enormous the forbidden one stays below them (-1e30 did not, at 1e-31)."""
    logp = torch.tensor([[-0.01, -5.0, -6.0]])
    allowed = torch.tensor([[False, True, True]])
    g = torch.Generator().manual_seed(0)
    for temperature in (1e-31, 1e-20, 1.0, 1e6):
        draws = {int(sample_next(logp, temperature, g, allowed=allowed)) for _ in range(30)}
        assert 0 not in draws


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-30, 1e-12])
def test_a_vanishing_temperature_is_greedy_over_what_is_allowed(temperature):
    """logp / 1e-40 overflowed float32 to -inf in every column: a NaN softmax, and the draw took
    the last character, the unknown token. Any temperature above 0 is valid, and near 0 the
    draw is the likeliest allowed character (the oracle: argmax)."""
    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(8, 50, generator=g) * 3, -1)
    logp[:, -1] = float("-inf")  # as the sampler forbids the unknown token
    allowed = torch.rand(8, 50, generator=g) < 0.5
    allowed[:, 0] = True
    for draws, oracle in ((sample_next(logp, temperature, g), logp.argmax(1)),
                          (sample_next(logp, temperature, g, allowed=allowed),
                           logp.masked_fill(~allowed, float("-inf")).argmax(1))):
        assert torch.equal(draws, oracle)


@pytest.mark.parametrize("temperature, top_p", [(1e300, 1.0), (1e39, 1.0), (1.0, 1e-300)])
def test_extreme_settings_never_write_the_unknown_token(ck, temperature, top_p):
    """--temp 1e300 is infinite in float32 (-inf / inf is NaN), and --top-p 1e-300 is 0, which
    kept no character: both wrote the unknown token (�) at every step. A huge temperature is
    uniform over the allowed characters; a tiny top-p keeps the likeliest."""
    texts = generate(ck.model, ck.vocab, n=4, max_chars=40, temperature=temperature,
                     top_p=top_p, seed=1, stop_at_newline=False)
    assert all(s.num_chars == 40 and "�" not in s.text for s in texts)
    if top_p < 1:  # the likeliest character each step: greedy
        greedy = generate(ck.model, ck.vocab, n=4, max_chars=40, top_k=1, seed=1,
                          stop_at_newline=False)
        assert [s.text for s in texts] == [s.text for s in greedy]


def test_a_vanishing_temperature_never_writes_the_unknown_token(ck):
    greedy = generate(ck.model, ck.vocab, n=2, max_chars=12, top_k=1, seed=1)
    tiny = generate(ck.model, ck.vocab, n=2, max_chars=12, temperature=1e-40, seed=1)
    assert [s.text for s in tiny] == [s.text for s in greedy]

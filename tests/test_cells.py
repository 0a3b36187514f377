"""GRU cells and attention over the poem so far: shapes, training, checkpoints, sampling and
constrained decoding work with them, and the attention sees exactly the positions it should."""

import json

import pytest
import torch
from click.testing import CliRunner

from poetgen.app.cli import cli
from poetgen.errors import ConfigError
from poetgen.lm.checkpoint import load_checkpoint, save_checkpoint
from poetgen.lm.config import ModelConfig
from poetgen.lm.corpus import Vocab
from poetgen.lm.model import ATTENTION_WINDOW, CharLSTM, PoemAttention
from poetgen.verse.check import check_poem

from test_constrain import synthetic_poems

VARIANTS = [dict(cell="gru"), dict(attention=8), dict(cell="gru", attention=8),
            dict(attention=8, proj_size=12)]


def small(vocab_size=40, newline_id=3, **cfg):
    torch.manual_seed(0)
    m = CharLSTM(ModelConfig(vocab_size=vocab_size, embed_size=8, hidden_size=16, num_layers=2,
                             cutoffs=(20,), newline_id=newline_id, **cfg))
    if m.attention is not None:  # its output map starts at zero: make the head matter
        torch.nn.init.normal_(m.attention.out.weight)
    return m


@pytest.mark.parametrize("cfg", VARIANTS)
def test_shapes_and_state_batch_dimension(cfg):
    m = small(**cfg)
    x = torch.randint(0, 40, (7, 3))
    out, state = m(x, m.start_state(3))
    P = cfg.get("proj_size") or 16
    assert out.shape == (7, 3, P) and state[0].shape == (2, 3, P)
    assert state[1].shape == (2, 3, 0 if cfg.get("cell") == "gru" else 16)
    assert len(state) == (4 if cfg.get("attention") else 2)
    assert all(s.size(1) == 3 for s in state)  # what beam search's reordering relies on
    assert torch.allclose(m.log_probs(out).exp().sum(-1), torch.ones(7, 3), atol=1e-5)
    assert m.start_output(3).shape == (3, P)


@pytest.mark.parametrize("cfg", VARIANTS)
def test_reading_in_pieces_or_one_at_a_time_gives_the_same_outputs(cfg):
    """The state carries everything: the RNN state and the attention's memory of the open poem."""
    m = small(**cfg).eval()
    x = torch.randint(0, 40, (40, 2))
    x[5, 0] = x[17, 0] = x[30, 1] = 3  # poem ends at different places in the two streams
    whole, _ = m(x, m.start_state(2))
    for cuts in ([11, 29], list(range(1, 40))):
        state, parts = m.start_state(2), []
        for a, b in zip([0, *cuts], [*cuts, 40]):
            out, state = m(x[a:b], state)
            parts.append(out)
        assert torch.allclose(torch.cat(parts), whole, atol=1e-5), cuts


def test_attention_sees_its_poem_so_far_and_nothing_else():
    """Against a plain loop: each position attends to itself and the earlier positions after the
    last newline before it, at most ATTENTION_WINDOW back."""
    torch.manual_seed(0)
    att = PoemAttention(6, 4)
    torch.nn.init.normal_(att.out.weight)  # zero at initialisation: make the head matter
    T = ATTENTION_WINDOW + 40
    h = torch.randn(T, 1, 6)
    ends = torch.zeros(T, 1, dtype=torch.bool)
    ends[[9, 20, 21]] = True  # poems 0-9, 10-20, 21 (an empty line), then one long poem
    out, memory, in_poem = att(h, ends, torch.zeros(ATTENTION_WINDOW, 1, 6),
                               torch.zeros(1, 1, dtype=torch.long))
    for t in range(T):
        first = max([e + 1 for e in (9, 20, 21) if e < t] + [0, t - ATTENTION_WINDOW + 1])
        keys = h[first : t + 1, 0]
        weights = torch.softmax(att.key(keys) @ att.query(h[t, 0]) / 2.0, dim=0)
        expected = h[t, 0] + att.out(weights @ keys)
        assert torch.allclose(out[t, 0], expected, atol=1e-5), t
    assert torch.equal(memory, h[-ATTENTION_WINDOW:]) and int(in_poem) == ATTENTION_WINDOW


def test_gru_and_attention_settings_are_checked():
    with pytest.raises(ConfigError, match="cell"):
        ModelConfig(cell="rnn").validate()
    with pytest.raises(ConfigError, match="proj_size"):
        ModelConfig(cell="gru", proj_size=8).validate()
    with pytest.raises(ConfigError, match="attention"):
        ModelConfig(attention=-1).validate()


@pytest.mark.parametrize("cfg", VARIANTS)
def test_checkpoint_round_trip(tmp_path, cfg):
    vocab = Vocab.build("春江花月夜山水风云雨\n，。")
    m = small(vocab_size=len(vocab), newline_id=vocab.newline_id, **cfg).eval()
    m.start_h.normal_()
    if m.attention is not None:
        m.start_out.normal_()
    ck = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", m, vocab, {}))
    x = torch.randint(0, len(vocab), (9, 2))
    a, _ = m(x, m.start_state(2))
    b, _ = ck.model(x, ck.model.start_state(2))
    assert torch.equal(a, b) and torch.equal(m.start_output(2), ck.model.start_output(2))
    assert ck.model.config.cell == m.config.cell and ck.model.config.attention == m.config.attention


@pytest.mark.parametrize("flags", [["--cell", "gru"], ["--attention", "8"],
                                   ["--cell", "gru", "--attention", "8"]])
def test_train_resume_sample_and_constrained_decoding(tmp_path, monkeypatch, flags):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "poems.txt").write_text(synthetic_poems(120), encoding="utf-8")
    common = ["--hidden-size", "24", "--embed-size", "8", "--batch-size", "4", "--bptt", "16",
              "--eval-every", "3", "--out", "run"]
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "poems.txt", "--max-steps", "4", *common, *flags])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["train", "poems.txt", "--max-steps", "6", "--resume", "--out", "run"])
    assert r.exit_code == 0, r.output
    last = load_checkpoint(tmp_path / "run" / "last.safetensors", with_extra=True)
    assert last.meta["training"]["step"] == 6
    assert ("train_memory" in last.extra) == ("--attention" in flags)
    info = json.loads(runner.invoke(cli, ["info", "run", "--json"]).stdout)
    assert info["config"]["cell"] == ("gru" if "gru" in flags else "lstm")
    assert info["config"]["attention"] == (8 if "--attention" in flags else 0)

    r = runner.invoke(cli, ["sample", "-c", "run", "--n", "3", "--seed", "1", "--max-chars", "30",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 3
    for extra in ([], ["--beam", "4"]):
        r = runner.invoke(cli, ["sample", "-c", "run", "--form", "五绝", "--seed", "2", "--json", *extra])
        assert r.exit_code == 0, r.output
        poem = json.loads(r.stdout.splitlines()[0])["text"]
        assert check_poem(poem).ok, poem

"""Evaluation: lines scored alone and batched (one document per line), or one stream (running
text), chosen by what the model learned (ModelConfig.text_kind)."""

import json
import math

import pytest
from click.testing import CliRunner
import torch

from poetgen.app.cli import cli
from poetgen.lm import evaluate
from poetgen.lm.checkpoint import load_checkpoint
from poetgen.lm.config import ModelConfig, model_config_from_dict, to_dict
from poetgen.lm.corpus import Vocab, detect_text_kind, encode_tensor
from poetgen.lm.evaluate import evaluate_ids, token_bits
from poetgen.lm.model import CharLSTM

from conftest import make_poems


def model_and_vocab(text, text_kind="lines", **cfg):
    torch.manual_seed(0)
    vocab = Vocab.build(text)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=8, hidden_size=16,
                                 cutoffs=(10,), text_kind=text_kind, newline_id=vocab.newline_id,
                                 **cfg))
    # A start state that is not zero, so that "from the start state" is tested as such.
    model.start_h.normal_()
    model.start_c.normal_()
    if model.attention is not None:
        model.start_out.normal_()
        torch.nn.init.normal_(model.attention.out.weight)  # zero at initialisation
    return model, vocab


# Lines of mixed lengths, an empty line, and a last line without its newline.
TEXT = make_poems(9, seed=1) + "\n" + make_poems(7, seed=2, line_len=7) + "春风"


@pytest.mark.parametrize("cfg", [dict(), dict(proj_size=8, num_layers=2), dict(softmax="full"),
                                 dict(cell="gru"), dict(attention=4)])
def test_lines_are_each_scored_alone_from_the_start_state(cfg, monkeypatch):
    """The batched figure is the sum over lines of each line read alone, as a one-line stream
    from the start state; small batches and pools make every grouping path run."""
    model, vocab = model_and_vocab(TEXT, **cfg)
    lines = TEXT.splitlines(keepends=True)
    alone = [evaluate_ids(model, vocab, [encode_tensor(vocab, line)], kind="running")
             for line in lines]
    monkeypatch.setattr(evaluate, "BATCH_CHARS", 70)
    monkeypatch.setattr(evaluate, "POOL_CHARS", 100)
    ids = encode_tensor(vocab, TEXT)
    batched = evaluate_ids(model, vocab, [ids[:50], ids[50:]])  # cut mid-line: no matter
    assert batched.chars == len(TEXT) == sum(r.chars for r in alone)
    assert batched.nats == pytest.approx(sum(r.nats for r in alone), rel=1e-5)
    # Per-token bits come back in text order.
    expected = torch.cat([token_bits(model, vocab, encode_tensor(vocab, line), kind="running")
                          for line in lines])
    assert torch.allclose(token_bits(model, vocab, ids), expected, atol=1e-4)


def test_a_line_longer_than_a_piece_is_read_in_pieces(monkeypatch):
    model, vocab = model_and_vocab(TEXT)
    line = encode_tensor(vocab, TEXT.replace("\n", "") + "\n")
    whole = evaluate_ids(model, vocab, [line], kind="lines")
    monkeypatch.setattr(evaluate, "PIECE", 16)
    assert evaluate_ids(model, vocab, [line], kind="lines").nats == pytest.approx(whole.nats, rel=1e-5)


def test_the_models_text_kind_chooses_the_reading():
    lines_model, vocab = model_and_vocab(TEXT, "lines")
    running_model, _ = model_and_vocab(TEXT, "running")
    running_model.load_state_dict(lines_model.state_dict())
    ids = encode_tensor(vocab, TEXT)
    by_lines = evaluate_ids(lines_model, vocab, [ids]).nats
    stream = evaluate_ids(running_model, vocab, [ids]).nats
    assert by_lines == pytest.approx(evaluate_ids(running_model, vocab, [ids], kind="lines").nats)
    assert stream == pytest.approx(evaluate_ids(lines_model, vocab, [ids], kind="running").nats)
    assert not math.isclose(by_lines, stream, rel_tol=1e-4)  # the two readings do differ here
    with pytest.raises(ValueError, match="kind"):
        evaluate_ids(lines_model, vocab, [ids], kind="stream")


def test_text_kind_detection():
    poems = make_poems(200)  # one stray blank line among 200 lines is still "lines"
    prose = "To be, or not to be,\nthat is the question.\n\nWhether 'tis nobler\nin the mind.\n" * 5
    for text, kind in [(poems, "lines"), (prose, "running"), ("one long line without breaks", "running"),
                       ("\n" + poems, "lines")]:
        vocab = Vocab.build(text)
        assert detect_text_kind(encode_tensor(vocab, text), vocab.newline_id) == kind, text[:30]


def test_checkpoints_from_before_text_kind_read_as_lines():
    saved = to_dict(ModelConfig(vocab_size=10, text_kind="running"))
    assert model_config_from_dict(saved).text_kind == "running"
    del saved["text_kind"]
    assert model_config_from_dict(saved).text_kind == "lines"


PROSE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
         "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 30


@pytest.mark.parametrize("text, flag, kind", [(make_poems(60), [], "lines"), (PROSE, [], "running"),
                                              (PROSE, ["--text-kind", "lines"], "lines")])
def test_training_records_the_text_kind_and_eval_follows_it(tmp_path, monkeypatch, text, flag, kind):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", "corpus.txt", "--hidden-size", "16", "--embed-size", "8",
                                 "--batch-size", "4", "--bptt", "16", "--max-steps", "2",
                                 "--out", "run", *flag])
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(cli, ["info", "run", "--json"]).stdout)
    assert info["config"]["text_kind"] == kind
    # `eval` reads the file as the model's text kind says.
    ck = load_checkpoint(tmp_path / "run")
    shown = json.loads(CliRunner().invoke(cli, ["eval", "run", "corpus.txt", "--json"]).stdout)
    expected = evaluate.evaluate_file(ck.model, ck.vocab, tmp_path / "corpus.txt", kind=kind)
    assert shown["bpc"] == pytest.approx(expected.bpc, abs=1e-4)

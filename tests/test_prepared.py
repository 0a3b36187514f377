"""Prepared corpora: `corpus encode` writes memory-mapped ids that `train` reads as it would the text."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from poetgen.app.cli import cli
from poetgen.errors import CorpusError
from poetgen.lm.checkpoint import load_checkpoint
from poetgen.lm.config import ModelConfig, TrainConfig
from poetgen.lm.corpus import Vocab, fingerprint, prepare
from poetgen.lm.prepared import encode_corpus, load_training_data, open_prepared
from poetgen.lm.train import train

from conftest import TINY_MODEL, TINY_TRAIN, make_poems


@pytest.fixture
def poems(tmp_path):
    p = tmp_path / "poems.txt"
    p.write_text(make_poems(300, seed=3) + "last line without a newline 鑫", encoding="utf-8")
    return p


@pytest.mark.parametrize("min_count, max_vocab", [(1, 0), (3, 20)])
def test_encoded_ids_are_what_prepare_makes_from_the_text(tmp_path, poems, min_count, max_vocab,
                                                           monkeypatch):
    import poetgen.lm.corpus as corpus

    config = TrainConfig(min_count=min_count, max_vocab=max_vocab, val_fraction=0.1)
    monkeypatch.setattr(corpus, "iter_text",  # small pieces: lines cross piece boundaries
                        lambda path, chunk_bytes=0, _read=corpus.iter_text: _read(path, 100))
    monkeypatch.setattr("poetgen.lm.prepared.iter_text", corpus.iter_text)
    report = encode_corpus([poems], tmp_path / "prep", config)
    expected = prepare(poems, None, config)
    data = open_prepared(tmp_path / "prep").data
    assert isinstance(data.train_ids, np.memmap) and data.train_ids.dtype == np.dtype("<u2")
    assert data.vocab == expected.vocab
    assert np.array_equal(data.train_ids, expected.train_ids.numpy())
    assert np.array_equal(data.val_ids, expected.val_ids.numpy())
    assert report.fingerprint == fingerprint(expected.train_ids)  # a text run resumes on it
    unk = expected.vocab.unk_id
    assert report.unknown["train"] == int((expected.train_ids == unk).sum())


@pytest.mark.parametrize("kind", ["auto", "lines"])
def test_running_text_is_detected_and_split_at_its_end_as_prepare_does(tmp_path, kind):
    paragraphs = make_poems(200, seed=4).replace("。", "。\n", 1).split("\n")
    text = "\n\n".join(paragraphs)  # blank lines between paragraphs: running text
    (tmp_path / "prose.txt").write_text(text, encoding="utf-8")
    config = TrainConfig(val_fraction=0.1)
    report = encode_corpus([tmp_path / "prose.txt"], tmp_path / "p", config, kind=kind)
    expected = prepare(tmp_path / "prose.txt", None, config, kind=kind)
    assert report.text_kind == expected.text_kind == ("running" if kind == "auto" else "lines")
    data = open_prepared(tmp_path / "p").data
    assert data.text_kind == expected.text_kind
    assert np.array_equal(data.train_ids, expected.train_ids.numpy())
    assert np.array_equal(data.val_ids, expected.val_ids.numpy())


def test_several_files_a_val_file_and_a_given_vocabulary(tmp_path):
    (tmp_path / "a.txt").write_text("春江花月\n夜", encoding="utf-8")  # no final newline
    (tmp_path / "b.txt").write_text("山水\n", encoding="utf-8")
    (tmp_path / "v.txt").write_text("春山鑫\n", encoding="utf-8")
    vocab = Vocab.build("春江花月夜山水\n")
    encode_corpus([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "p", TrainConfig(),
                  val_path=tmp_path / "v.txt", vocab=vocab)
    prepared = open_prepared(tmp_path / "p")
    data = prepared.data
    assert vocab.decode(data.train_ids) == "春江花月\n夜\n山水\n"  # files do not run together
    assert vocab.decode(data.val_ids) == "春山\ufffd\n"
    assert prepared.meta["val"]["unknown"] == 1 and prepared.meta["vocab_given"]
    # A run from the checkpoint's vocabulary accepts it; another vocabulary is refused.
    assert load_training_data(tmp_path / "p", None, TrainConfig(), vocab).vocab == vocab
    with pytest.raises(CorpusError, match="--vocab-from"):
        load_training_data(tmp_path / "p", None, TrainConfig(), Vocab.build("春"))


def test_vocabularies_over_65535_characters_are_stored_as_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x9FFF)] + [chr(c) for c in range(0x20000, 0x2B73F)]
    assert len(chars) > 65_535
    text = "".join(chars) + "\n"
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    (tmp_path / "v.txt").write_text(chars[-1] + "\n", encoding="utf-8")
    encode_corpus([tmp_path / "big.txt"], tmp_path / "p", TrainConfig(), tmp_path / "v.txt")
    data = open_prepared(tmp_path / "p").data
    assert data.train_ids.dtype == np.dtype("<u4") and data.vocab.decode(data.train_ids) == text
    assert data.vocab.decode(data.val_ids) == chars[-1] + "\n"


def test_an_interrupted_encode_leaves_the_previous_corpus_intact(tmp_path, poems):
    encode_corpus([poems], tmp_path / "p", TrainConfig())
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}

    def fail(nbytes):
        raise KeyboardInterrupt

    (tmp_path / "other.txt").write_text(make_poems(50, seed=9), encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        encode_corpus([tmp_path / "other.txt"], tmp_path / "p", TrainConfig(), progress=fail)
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before
    # A finished encode replaces it, and removes the old id files.
    encode_corpus([tmp_path / "other.txt"], tmp_path / "p", TrainConfig())
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert len(names) == 3 and not set(names) & (set(before) - {"corpus.json"})


def test_damaged_prepared_corpora_are_refused(tmp_path, poems):
    encode_corpus([poems], tmp_path / "p", TrainConfig())
    meta = json.loads((tmp_path / "p" / "corpus.json").read_text())
    ids = tmp_path / "p" / meta["train"]["file"]
    ids.write_bytes(ids.read_bytes()[:-2])
    with pytest.raises(CorpusError, match="encode the corpus again"):
        open_prepared(tmp_path / "p")
    (tmp_path / "p" / "corpus.json").write_text("{", encoding="utf-8")
    with pytest.raises(CorpusError, match="not valid JSON"):
        open_prepared(tmp_path / "p")


def test_training_on_the_prepared_corpus_equals_training_on_the_text(tmp_path, poems):
    # Without the per-epoch shuffle, which reorders text in memory but not a mapped corpus.
    config = TrainConfig(**{**TINY_TRAIN, "max_steps": 8, "eval_every": 4, "min_evals": 1,
                            "shuffle": False})
    encode_corpus([poems], tmp_path / "p", config)
    for name, data in (("text", prepare(poems, None, config)),
                       ("prepared", load_training_data(tmp_path / "p", None, config))):
        train(data.train_ids, data.val_ids, data.vocab, ModelConfig(**TINY_MODEL), config,
              tmp_path / name)
    text = load_checkpoint(tmp_path / "text" / "last.safetensors")
    prepared = load_checkpoint(tmp_path / "prepared" / "last.safetensors")
    same = lambda meta: {k: v for k, v in meta["training"].items() if k != "elapsed"}  # noqa
    assert same(text.meta) == same(prepared.meta)  # val bpc, fingerprint, step, ...
    for name, weight in text.model.state_dict().items():
        assert torch.equal(weight, prepared.model.state_dict()[name]), name
    # With the shuffle on, the text is reordered and the mapped corpus is not.
    shuffled = TrainConfig(**{**config.__dict__, "shuffle": True})
    for name, data in (("text-s", prepare(poems, None, shuffled)),
                       ("prepared-s", load_training_data(tmp_path / "p", None, shuffled))):
        train(data.train_ids, data.val_ids, data.vocab, ModelConfig(**TINY_MODEL), shuffled,
              tmp_path / name)
    assert torch.equal(load_checkpoint(tmp_path / "prepared-s" / "last.safetensors").model
                       .embedding.weight, prepared.model.embedding.weight)
    assert not torch.equal(load_checkpoint(tmp_path / "text-s" / "last.safetensors").model
                           .embedding.weight, text.model.embedding.weight)


def test_cli_encode_then_train(tmp_path, poems):
    runner = CliRunner()
    done = runner.invoke(cli, ["corpus", "encode", str(poems), "-o", str(tmp_path / "p"),
                               "--min-count", "2", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["dtype"] == "uint16" and summary["train_tokens"] > summary["val_tokens"] > 0
    args = ["train", str(tmp_path / "p"), "--out", str(tmp_path / "run"), "--max-steps", "2",
            "--eval-every", "2", "--hidden-size", "16", "--batch-size", "4", "--device", "cpu"]
    done = runner.invoke(cli, args + ["--min-count", "1"])
    assert done.exit_code == 1 and "encoded with --min-count 2; drop --min-count" in done.output
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    saved = load_checkpoint(tmp_path / "run" / "last.safetensors").meta
    assert saved["train_config"]["min_count"] == 2  # what the vocabulary was made with

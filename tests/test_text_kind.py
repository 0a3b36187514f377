"""Running text (prose, plays) next to one document per line (poems): what a model learned is
detected from its corpus, stored in its checkpoint, and decides how it is split and sampled."""

import json

import pytest
import torch
from click.testing import CliRunner

from poetgen.app.cli import SAMPLE_RULE, cli
from poetgen.lm.checkpoint import load_checkpoint
from poetgen.lm.config import ModelConfig, TrainConfig, model_config_from_dict
from poetgen.lm.corpus import Vocab, detect_text_kind, encode_tensor, split_text, text_kind_of
from poetgen.lm.train import evaluation_due, train
from poetgen.settings import GenerationSettings
from poetgen.write import session_defaults, write

from conftest import SHARED, TINY_MODEL, TINY_TRAIN

PROSE_FLAGS = ["--hidden-size", "48", "--embed-size", "16", "--batch-size", "8", "--bptt", "32",
               "--max-steps", "60", "--eval-every", "60", "--lr", "1e-2", "--seed", "1"]


@pytest.fixture(scope="module")
def prose_run(tmp_path_factory, prose_text):
    """A small model of running text, trained through the CLI as a user would."""
    d = tmp_path_factory.mktemp("prose")
    corpus = d / "play.txt"
    corpus.write_text(prose_text, encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(corpus), "--out", str(d / "run"), *PROSE_FLAGS])
    assert r.exit_code == 0, r.output
    assert "running text" in r.stderr  # the start line says what was detected
    return d / "run"


def test_detect_text_kind(tiny_text, prose_text):
    assert text_kind_of(tiny_text) == "lines"
    assert text_kind_of(prose_text) == "running"
    assert text_kind_of("a single paragraph without a line break") == "running"
    vocab = Vocab.build(prose_text)
    assert detect_text_kind(encode_tensor(vocab, prose_text), vocab.newline_id) == "running"
    assert detect_text_kind(torch.tensor([0, 1, 0]), None) == "running"  # no newline at all


@pytest.mark.skipif(not (SHARED / "corpora").exists(), reason="needs ../shared/corpora")
def test_real_corpora_kinds():
    from poetgen.lm.corpus import read_text

    assert text_kind_of(read_text(SHARED / "corpora" / "tang_train.txt")) == "lines"
    assert text_kind_of(read_text(SHARED / "corpora" / "tinyshakespeare.txt")) == "running"


def test_running_text_is_split_at_its_end_as_nanogpt_does(prose_text, tiny_text):
    train_text, val_text = split_text(prose_text, 0.1, "running")
    n = len(prose_text)
    assert train_text == prose_text[: int(n * 0.9)] and val_text == prose_text[int(n * 0.9):]
    lines_train, lines_val = split_text(tiny_text, 0.2, "lines")  # hashed lines: not a tail
    assert lines_val and not tiny_text.endswith(lines_val)
    assert sorted((lines_train + lines_val).splitlines()) == sorted(tiny_text.splitlines())


def test_checkpoint_records_the_kind_and_old_checkpoints_read_as_lines(prose_run, tiny_run):
    assert load_checkpoint(prose_run).model.config.text_kind == "running"
    assert load_checkpoint(tiny_run / "best.safetensors").model.config.text_kind == "lines"
    old = {k: v for k, v in ModelConfig().__dict__.items() if k != "text_kind"}
    assert model_config_from_dict(old).text_kind == "lines"  # saved before the field existed
    info = json.loads(CliRunner().invoke(cli, ["info", str(prose_run), "--json"]).stdout)
    assert info["config"]["text_kind"] == "running"


def test_text_kind_flag_overrides_detection(tmp_path, prose_text):
    corpus = tmp_path / "play.txt"
    corpus.write_text(prose_text, encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(corpus), "--out", str(tmp_path / "run"),
                                 "--text-kind", "lines", *PROSE_FLAGS, "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "run").model.config.text_kind == "lines"


def test_prose_model_samples_text_with_the_defaults(prose_run):
    """The first-contact bug: sampling stopped at the first newline, the likeliest first pick of
    a model of a play, and printed nothing. A running-text model writes max_chars."""
    ck = load_checkpoint(prose_run)
    samples = write(ck.model, ck.vocab, GenerationSettings(n=5, seed=1, max_chars=120))
    assert all(s.num_chars == 120 for s in samples)  # none stopped at a newline
    assert all(s.text.strip() and not s.text.startswith("\n") for s in samples)
    assert any("\n" in s.text for s in samples)
    for seed in range(1, 6):  # the CLI with no option but the checkpoint
        r = CliRunner().invoke(cli, ["sample", "-c", str(prose_run), "--seed", str(seed)])
        assert r.exit_code == 0 and r.stdout.strip(), r.output
    r = CliRunner().invoke(cli, ["sample", "-c", str(prose_run), "--n", "3", "--seed", "2"])
    assert r.stdout.count(SAMPLE_RULE) == 2  # multi-line samples are told apart


def test_poem_model_still_stops_at_the_end_of_a_poem(tiny_run):
    ck = load_checkpoint(tiny_run / "best.safetensors")
    samples = write(ck.model, ck.vocab, GenerationSettings(n=8, seed=1, max_chars=300))
    assert all("\n" not in s.text for s in samples)
    assert any(s.num_chars < 300 for s in samples)  # ended by the end of a poem, not the limit
    free = write(ck.model, ck.vocab, GenerationSettings(n=2, seed=1, max_chars=300, no_stop=True))
    assert all(s.num_chars == 300 for s in free)


def test_repl_starts_in_free_mode_for_a_prose_model(prose_run, tiny_run):
    ck = load_checkpoint(prose_run)
    assert session_defaults(ck.model, ck.vocab) == {"mode": "free"}
    r = CliRunner().invoke(cli, ["repl", "-c", str(prose_run), "--seed", "1"],
                           input="KING HENRY:\n:quit\n")
    assert r.exit_code == 0, r.output
    assert "free text up to 200 characters" in r.stdout and "error" not in r.stdout
    assert "KING HENRY:" in r.stdout
    verse = load_checkpoint(tiny_run / "best.safetensors")
    assert session_defaults(verse.model, verse.vocab) == {"form": "七绝"}
    # --form with a model of running text was accepted and ignored (the session stayed free).
    r = CliRunner().invoke(cli, ["repl", "-c", str(prose_run), "--form", "五绝"], input="春\n")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "cannot write a 五绝" in r.output
    # --form off with a verse model started on its default 七绝.
    r = CliRunner().invoke(cli, ["repl", "-c", str(tiny_run), "--form", "off"], input="")
    assert r.exit_code == 0 and r.stdout.startswith("free text") and "七绝" not in r.stdout


def test_short_runs_are_evaluated_at_least_min_evals_times(tmp_path, tiny_text):
    vocab = Vocab.build(tiny_text)
    ids = encode_tensor(vocab, tiny_text)
    cfg = TrainConfig(**{**TINY_TRAIN, "max_steps": 20, "eval_every": 250, "min_evals": 5})
    train(ids, ids[:200], vocab, ModelConfig(**TINY_MODEL), cfg, tmp_path)
    steps = [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["4", "8", "12", "16", "20"]


def test_evaluation_due_by_time_and_by_steps():
    timed = TrainConfig(time_budget=100, eval_every=10_000, min_evals=10)
    assert evaluation_due(timed, 7, 9.9, 10.1, None)  # crossed 10 s
    assert not evaluation_due(timed, 8, 10.1, 19.9, None)
    stepped = TrainConfig(time_budget=0, max_steps=50, eval_every=250, min_evals=10)
    assert [s for s in range(1, 51) if evaluation_due(stepped, s, 0, 0, 50)] == list(range(5, 51, 5))
    frequent = TrainConfig(time_budget=0, max_steps=50, eval_every=2, min_evals=10)
    assert evaluation_due(frequent, 2, 0, 0, 50)  # eval_every still counts when more frequent

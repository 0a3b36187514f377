"""Shared fixtures: a tiny synthetic corpus and a tiny model trained on it (once per session).

Tests never depend on ../shared; those that read the real corpora skip when it is absent.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from poetgen.lm.config import ModelConfig, TrainConfig
from poetgen.lm.corpus import prepare_text
from poetgen.lm.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared"
HAN = "春江花月夜山水风云雨雪天地人心秋声明光长空日落红南北东西来去不知何处归"


def make_poems(n: int, seed: int = 0, line_len: int = 5, lines: int = 4) -> str:
    """Poem-shaped lines (句，句。…) from a small alphabet, so tiny models learn them quickly."""
    rng = random.Random(seed)
    poems = []
    for _ in range(n):
        verse = []
        for i in range(lines):
            verse.append("".join(rng.choice(HAN) for _ in range(line_len)) + ("，" if i % 2 == 0 else "。"))
        poems.append("".join(verse))
    return "\n".join(poems) + "\n"


WORDS = "the a of to and my thy love king lord night day sweet death heart sir good fair".split()
SPEAKERS = ["ROMEO", "JULIET", "KING HENRY", "NURSE"]


def make_prose(speeches: int, seed: int = 0) -> str:
    """Running text shaped like tinyshakespeare: a speaker, lines of verse, a blank line."""
    rng = random.Random(seed)
    out = []
    for _ in range(speeches):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8))).capitalize()
                 + rng.choice([",", ".", ";", "!"]) for _ in range(rng.randint(1, 4))]
        out.append(f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines) + "\n\n")
    return "".join(out)


@pytest.fixture(scope="session")
def prose_text() -> str:
    return make_prose(150)


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return make_poems(60)


@pytest.fixture
def corpus_file(tmp_path, tiny_text) -> Path:
    p = tmp_path / "poems.txt"
    p.write_text(tiny_text, encoding="utf-8")
    return p


TINY_MODEL = dict(embed_size=16, hidden_size=32, num_layers=2, cutoffs=(20,))
TINY_TRAIN = dict(batch_size=4, bptt=16, lr=1e-2, warmup_steps=5, eval_every=20, time_budget=0,
                  max_steps=40, device="cpu", seed=0, sample_chars=10)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_text):
    """A tiny model trained for 40 steps; returns its run directory."""
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(**TINY_TRAIN)
    data = prepare_text(tiny_text, tiny_text[:200], config)
    train(data.train_ids, data.val_ids, data.vocab, ModelConfig(**TINY_MODEL), config, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)  # small tensors: threads only add noise and contention


@pytest.fixture(scope="session")
def verse_checkpoint(tmp_path_factory) -> Path:
    """A small model over common Tang characters, trained briefly through the CLI."""
    from click.testing import CliRunner

    from poetgen.app.cli import cli
    from test_constrain import synthetic_poems

    d = tmp_path_factory.mktemp("verse")
    corpus = d / "poems.txt"
    corpus.write_text(synthetic_poems(200), encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", str(corpus), "--out", str(d / "run"), "--hidden-size", "32",
                                 "--embed-size", "16", "--batch-size", "8", "--bptt", "32",
                                 "--max-steps", "20", "--eval-every", "20"])
    assert r.exit_code == 0, r.output
    return d / "run" / "best.safetensors"

"""Shared fixtures: a tiny synthetic corpus and a tiny model trained on it (once per session).

Tests never depend on ../shared; those that read the real corpora skip when it is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
import torch

from poetgen.lm.config import ModelConfig, TrainConfig
from poetgen.lm.corpus import prepare_text
from poetgen.lm.train import train

# ../shared next to the repository; POETGEN_SHARED points elsewhere (e.g. from a git worktree).
SHARED = Path(os.environ.get("POETGEN_SHARED") or Path(__file__).resolve().parents[2] / "shared")
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


def edit_header(data: bytes, change_meta=lambda meta: None, change_header=lambda header: None,
                sign: bool = True) -> bytes:
    """A checkpoint's bytes with its JSON header edited, as a buggy tool would. `sign` gives the
    result a valid checksum, computed here from the documented rule (SHA-256 of every byte of the
    file, the checksum's own 64 digits counted as zeros), so that tests reach the checks behind
    the checksum."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["poetgen"])
    change_meta(meta)
    header["__metadata__"]["poetgen"] = json.dumps(meta, ensure_ascii=False)
    change_header(header)
    header["__metadata__"]["poetgen_sha256"] = "0" * 64
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    out = len(raw).to_bytes(8, "little") + raw + data[8 + n:]
    if sign:
        zeros = b'"poetgen_sha256":"' + b"0" * 64 + b'"'
        digest = hashlib.sha256(out).hexdigest().encode()
        out = out.replace(zeros, zeros.replace(b"0" * 64, digest))
    return out


def rewrite_header(path: Path, change_meta=lambda meta: None, change_header=lambda header: None,
                   sign: bool = True) -> None:
    path.write_bytes(edit_header(path.read_bytes(), change_meta, change_header, sign))


def save_v1(path: Path, model, vocab, meta: dict) -> Path:
    """A checkpoint as poetgen wrote it before the whole-file checksum (format v1): a SHA-256 of
    tensor names and bytes only, written by the safetensors library."""
    from safetensors.torch import save as safetensors_bytes

    from poetgen.lm.config import to_dict

    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()
               if k not in model.tied_names()}
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].reshape(-1).view(torch.uint8).numpy().tobytes())
    header = dict(meta, format="poetgen-checkpoint-v1", config=to_dict(model.config),
                  vocab=list(vocab.chars), sha256=h.hexdigest())
    path.write_bytes(safetensors_bytes(tensors, metadata={"poetgen": json.dumps(header)}))
    return path

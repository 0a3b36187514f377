import csv
import math
import os
import signal

import pytest
import torch

from poetgen.lm.checkpoint import load_checkpoint
from poetgen.lm.config import ModelConfig, TrainConfig
from poetgen.lm.corpus import Vocab, prepare_text
from poetgen.errors import CheckpointError, ConfigError, NonFiniteLossError
from poetgen.lm.model import CharLSTM
from poetgen.lm.train import (Callbacks, TrainingInterrupted, learning_rate, make_optimizer,
                               sgd_step, train)

from conftest import TINY_MODEL, TINY_TRAIN, make_poems


def setup(text):
    data = prepare_text(text, text[:150], TrainConfig())
    return data.train_ids, data.val_ids, data.vocab


def run(tmp, text, resume=False, callbacks=None, **overrides):
    ids, val, vocab = setup(text)
    cfg = TrainConfig(**{**TINY_TRAIN, "max_steps": 12, "eval_every": 4, "min_evals": 1, **overrides})
    return train(ids, val, vocab, ModelConfig(**TINY_MODEL, dropout=0.2), cfg, tmp,
                 resume=resume, callbacks=callbacks)


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, tiny_text):
    run(tmp_path / "a", tiny_text)

    def interrupt(info):
        if info.step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as e:
        run(tmp_path / "b", tiny_text, callbacks=Callbacks(on_step=interrupt))
    assert e.value.step == 6
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").meta["training"]["step"] == 6
    run(tmp_path / "b", tiny_text, resume=True)
    a = load_checkpoint(tmp_path / "a" / "last.safetensors").model.state_dict()
    b = load_checkpoint(tmp_path / "b" / "last.safetensors").model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with open(tmp_path / "b" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [4, 8, 12]


def test_new_run_refuses_to_overwrite_and_resume_checks_corpus(tmp_path, tiny_text):
    run(tmp_path, tiny_text, max_steps=4)
    with pytest.raises(CheckpointError, match="--resume"):
        run(tmp_path, tiny_text, max_steps=4)
    with pytest.raises(CheckpointError, match="different corpus"):
        run(tmp_path, tiny_text[::-1], resume=True, max_steps=8)


def test_init_starts_from_a_checkpoints_weights_with_new_regularization(tmp_path, tiny_text):
    run(tmp_path / "a", tiny_text)
    source = load_checkpoint(tmp_path / "a" / "last.safetensors")
    ids, val, vocab = setup(tiny_text)
    cfg = TrainConfig(**{**TINY_TRAIN, "max_steps": 8, "eval_every": 4, "lr": 1e-9})
    # A different shape in model_config is ignored (the checkpoint decides); only the
    # regularization (dropout, weight drop) is taken.
    other = ModelConfig(**{**TINY_MODEL, "hidden_size": 64}, dropout=0.5, weight_drop=0.3)
    train(ids, val, vocab, other, cfg, tmp_path / "b", init=tmp_path / "a" / "last.safetensors")
    b = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert b.model.config.dropout == 0.5 and b.model.lstm.dropout == 0.5
    assert b.model.config.weight_drop == 0.3
    assert b.model.config.hidden_size == TINY_MODEL["hidden_size"]
    for name, weight in source.model.state_dict().items():
        if not name.startswith("start_"):  # the start state is burned in again at evaluation
            assert torch.allclose(weight, b.model.state_dict()[name], atol=1e-6), name
    assert b.meta["init"]["sha256"] == source.meta["sha256"] and b.meta["init"]["step"] == 12
    # A resumed second stage still says where it started from.
    train(ids, val, vocab, other, TrainConfig(**{**cfg.__dict__, "max_steps": 12}), tmp_path / "b",
          resume=True)
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").meta["init"] == b.meta["init"]
    with pytest.raises(CheckpointError, match="own vocabulary"):
        train(ids, val, Vocab.build(tiny_text + "鑫"), other, cfg, tmp_path / "c",
              init=tmp_path / "a" / "last.safetensors")


def test_nan_loss_stops_without_touching_last_checkpoint(tmp_path, tiny_text):
    model_ref = {}

    def poison(info):
        if info.step == 5:  # after the step-4 checkpoint was written
            last = tmp_path / "last.safetensors"
            model_ref["bytes"] = last.read_bytes()
            ck_model = poison.model
            with torch.no_grad():
                ck_model.embedding.weight.fill_(math.nan)

    import poetgen.lm.train as train_mod
    original = train_mod.CharLSTM

    class Spy(original):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            poison.model = self

    train_mod.CharLSTM = Spy
    try:
        with pytest.raises(NonFiniteLossError, match="step 6.*left as it was"):
            run(tmp_path, tiny_text, callbacks=Callbacks(on_step=poison))
    finally:
        train_mod.CharLSTM = original
    assert (tmp_path / "last.safetensors").read_bytes() == model_ref["bytes"]


def test_precision_is_fp32_or_bf16():
    assert TrainConfig().precision == "fp32"
    TrainConfig(precision="bf16").validate()
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16"):
        TrainConfig(precision="fp16").validate()


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 50, 0.5) == pytest.approx(0.55)
    assert learning_rate(cfg, 99, 1.0) == pytest.approx(0.1)


def test_training_lowers_validation_bpc(tiny_run):
    with open(tiny_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(4, 41, 4))  # eval_every 20, min_evals 10
    ck = load_checkpoint(tiny_run / "best.safetensors")
    # A uniform guess costs log2(V) bits per character. The fixture's verse characters are random,
    # so only the layout (punctuation, line ends) is learnable: that is worth about 0.3 bit.
    assert ck.meta["training"]["best_val_bpc"] < math.log2(len(ck.vocab)) - 0.1


def test_interrupt_before_any_evaluation_writes_strict_json(tmp_path, tiny_text):
    import json
    import struct

    def interrupt(info):
        if info.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        run(tmp_path, tiny_text, callbacks=Callbacks(on_step=interrupt))
    data = (tmp_path / "last.safetensors").read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    meta = json.loads(header["__metadata__"]["poetgen"], parse_constant=no_constants)
    assert meta["training"]["best_val_bpc"] is None and meta["training"]["val_bpc"] is None
    run(tmp_path, tiny_text, resume=True)  # and it resumes from there


def test_sgd_step_clips_the_gradient_norm():
    def gradients_after_one_step(clip):
        torch.manual_seed(0)
        model = CharLSTM(ModelConfig(vocab_size=40, hidden_size=24, embed_size=8, cutoffs=()))
        x, y = torch.randint(0, 40, (10, 4)), torch.randint(0, 40, (10, 4))
        sgd_step(model, make_optimizer(model, TrainConfig()), x, y, model.zero_state(4), lr=1e-3,
                 clip=clip)
        return [p.grad.clone() for p in model.parameters()]

    def norm(grads):
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    raw = gradients_after_one_step(clip=1e9)
    clipped = gradients_after_one_step(clip=norm(raw) / 10)
    assert norm(clipped) == pytest.approx(norm(raw) / 10, rel=1e-4)
    for r, c in zip(raw, clipped):  # scaled down, same direction
        assert torch.allclose(c, r / 10, rtol=1e-3, atol=1e-7)


def test_training_overfits_a_tiny_corpus(tmp_path):
    text = make_poems(8)  # 200 characters: one chunk of two streams, the same every step
    config = TrainConfig(batch_size=2, bptt=128, lr=1e-2, warmup_steps=1, max_steps=150,
                         time_budget=0, eval_every=150, device="cpu", seed=0, sample_chars=10)
    data = prepare_text(text, text, config)
    losses = []
    result = train(data.train_ids, data.val_ids, data.vocab,
                   ModelConfig(embed_size=16, hidden_size=64, cutoffs=()), config, tmp_path,
                   callbacks=Callbacks(on_step=lambda info: losses.append(info.loss)))
    assert len(losses) == result.steps == 150
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])

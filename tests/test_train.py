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
                               optimizer_step, train)

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
    with pytest.raises(CheckpointError, match="holds no run to resume .*leave out --resume"):
        run(tmp_path, tiny_text, resume=True, max_steps=4)
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
    assert b.meta["init"]["sha256"] == source.sha256 and b.meta["init"]["step"] == 12
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
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 0.0, 1.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 0.0, 1.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 50, 0.5, 1.0) == pytest.approx(0.55)
    assert learning_rate(cfg, 99, 1.0, 1.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 50, 0.5, 0.02) == pytest.approx(0.011)


def test_auto_lr_is_high_for_short_runs_low_for_long_ones_and_log_linear_between():
    from poetgen.lm.config import AUTO_LR_HIGH, AUTO_LR_LOW, AUTO_LR_STEPS, auto_lr

    short, long = AUTO_LR_STEPS
    assert [auto_lr(n) for n in (1, short / 2, short)] == [AUTO_LR_HIGH] * 3
    assert [auto_lr(n) for n in (long, 10 * long, math.inf)] == [AUTO_LR_LOW] * 3
    # Log-linear: the geometric middle of the steps takes the geometric middle of the rates.
    middle = math.sqrt(short * long)
    assert auto_lr(middle) == pytest.approx(math.sqrt(AUTO_LR_HIGH * AUTO_LR_LOW))
    between = [auto_lr(n) for n in range(short, long + 1, 50)]
    assert all(a > b for a, b in zip(between, between[1:]))


def test_the_peak_learning_rate_follows_the_run_s_plan_unless_given_or_fixed():
    from poetgen.lm.config import auto_lr
    from poetgen.lm.train import peak_lr, planned_steps

    auto = TrainConfig(lr=0.0)
    assert peak_lr(TrainConfig(lr=0.05), 2000, fixed=0.01) == 0.05  # given (or given anew)
    assert peak_lr(auto, 2000, fixed=0.013) == 0.013  # fixed at the end of the warm-up
    assert peak_lr(auto, 2000) == auto_lr(2000)

    def plan(steps=0, epochs=0.0, budget=0.0, step=0, elapsed=0.0, since=None):
        cfg = TrainConfig(max_steps=steps, epochs=epochs, time_budget=budget)
        return planned_steps(cfg, step, elapsed, 700, since)

    # The nearest limit; a time budget's from the pace since the first step ended (there 5 s in,
    # after starting up: 100 more steps in 20 s, so 100 + 580 / 0.2 = 3,000), unknown before.
    assert plan(steps=900) == 900 and plan(epochs=2.0) == 1400
    assert plan(budget=600, step=101, elapsed=25.0, since=(1, 5.0)) == pytest.approx(2976)
    assert plan(steps=900, epochs=2.0, budget=600, step=101, elapsed=25.0, since=(1, 5.0)) == 900
    assert plan(budget=600, step=1, elapsed=5.0, since=None) == math.inf
    assert plan(budget=600, step=1, elapsed=5.0, since=(1, 5.0)) == math.inf
    with pytest.raises(ConfigError, match="lr must be positive, or 0"):
        TrainConfig(lr=-0.01).validate()
    with pytest.raises(ConfigError, match="warmup_steps must be 0 or more"):
        TrainConfig(warmup_steps=-1).validate()
    for limit in ("epochs", "max_steps", "time_budget"):  # a negative one ran without end
        with pytest.raises(ConfigError, match="epochs, max_steps and time_budget must be 0"):
            TrainConfig(**{"max_steps": 10, limit: -2}).validate()


def test_a_gru_takes_half_the_lstms_rate_at_every_length(tmp_path, tiny_text):
    from poetgen.lm.config import auto_lr

    for steps in (1, 800, 1500, 2200, 3000, 10_000, math.inf):
        assert auto_lr(steps, "gru") == pytest.approx(auto_lr(steps) / 2)
    ids, val, vocab = setup(tiny_text)  # and a GRU run with lr 0 fixes a GRU's peak
    cfg = TrainConfig(**{**TINY_TRAIN, "lr": 0.0, "max_steps": 8, "eval_every": 4, "min_evals": 1})
    train(ids, val, vocab, ModelConfig(**TINY_MODEL, cell="gru"), cfg, tmp_path)
    meta = load_checkpoint(tmp_path / "last.safetensors").meta["training"]
    assert meta["peak_lr"] == pytest.approx(auto_lr(8, "gru")) == pytest.approx(0.01)


def test_a_run_with_lr_0_fixes_its_peak_after_the_warm_up_and_a_resume_keeps_it(
        tmp_path, tiny_text, monkeypatch):
    """With the thresholds scaled down to a tiny run: 6 planned steps take a rate between the
    two, fixed at the end of the warm-up (5 steps) and saved; resumed to 12 steps (which alone
    would take the low rate) the run keeps it, and every step's rate is the schedule's."""
    from poetgen.lm import config as config_mod

    monkeypatch.setattr(config_mod, "AUTO_LR_STEPS", (4, 8))
    peak = config_mod.auto_lr(6)
    assert config_mod.AUTO_LR_LOW < peak < config_mod.AUTO_LR_HIGH
    rates = []
    spy = Callbacks(on_step=lambda info: rates.append(info.lr))
    run(tmp_path, tiny_text, lr=0.0, max_steps=6, callbacks=spy)
    meta = load_checkpoint(tmp_path / "last.safetensors").meta["training"]
    assert meta["peak_lr"] == pytest.approx(peak)
    cfg = TrainConfig(**{**TINY_TRAIN, "lr": 0.0, "max_steps": 6})
    assert rates == pytest.approx([learning_rate(cfg, s, s / 6, peak) for s in range(6)])
    rates.clear()
    run(tmp_path, tiny_text, resume=True, lr=0.0, max_steps=12, callbacks=spy)
    cfg = TrainConfig(**{**TINY_TRAIN, "lr": 0.0, "max_steps": 12})
    assert rates == pytest.approx([learning_rate(cfg, s, s / 12, peak) for s in range(6, 12)])
    assert config_mod.auto_lr(12) != pytest.approx(peak)


def test_the_peak_follows_the_plan_through_the_warm_up_then_stays(tmp_path, tiny_text,
                                                                  monkeypatch):
    """A plan that changes at every step (as a time budget's pace may): each warm-up step ramps
    to the latest plan's peak; from the warm-up's last step (the 5th) the peak is that step's,
    whatever the plan says after."""
    from poetgen.lm import config as config_mod
    from poetgen.lm import train as train_mod

    monkeypatch.setattr(config_mod, "AUTO_LR_STEPS", (4, 16))
    monkeypatch.setattr(train_mod, "planned_steps", lambda cfg, step, *rest: 5 + 2 * step)
    rates = []
    run(tmp_path, tiny_text, lr=0.0, max_steps=10,
        callbacks=Callbacks(on_step=lambda info: rates.append(info.lr)))
    cfg = TrainConfig(**{**TINY_TRAIN, "lr": 0.0, "max_steps": 10})
    peaks = [config_mod.auto_lr(5 + 2 * min(s, 4)) for s in range(10)]
    assert len(set(peaks[:5])) == 5  # the plan moved the peak at every warm-up step...
    assert rates == pytest.approx([learning_rate(cfg, s, s / 10, peaks[s]) for s in range(10)])
    assert load_checkpoint(tmp_path / "last.safetensors").meta["training"]["peak_lr"] == \
        pytest.approx(peaks[4])  # ...and stopped at the 5th


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
        optimizer_step(model, make_optimizer(model, TrainConfig()), x, y, model.zero_state(4),
                       lr=1e-3, clip=clip)
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


def test_init_reports_and_limits_the_share_of_characters_outside_the_vocabulary(tmp_path,
                                                                                 tiny_text):
    from dataclasses import replace

    run(tmp_path / "a", tiny_text)  # a model of Chinese verse
    start = tmp_path / "a" / "last.safetensors"
    vocab = load_checkpoint(start).vocab
    cfg = TrainConfig(**{**TINY_TRAIN, "max_steps": 2, "eval_every": 2})
    model = ModelConfig(**TINY_MODEL)

    def fine_tune(text, config, out):
        data = prepare_text(text, text[:40], config, vocab=vocab)
        infos = []
        train(data.train_ids, data.val_ids, vocab, model, config, tmp_path / out, init=start,
              callbacks=Callbacks(on_start=infos.append))
        return infos[0]["init_unknown_share"]

    english = "To be, or not to be, that is the question.\n" * 20
    outside = sum(c not in vocab for c in english) / len(english)  # all but the newlines
    assert outside > 0.9
    with pytest.raises(ConfigError, match=rf"{100 * outside:.1f}% of the training characters .*"
                                          r"--init-max-unknown 1"):
        fine_tune(english, cfg, "b")
    assert not (tmp_path / "b" / "last.safetensors").exists()
    assert fine_tune(english, replace(cfg, init_max_unknown=1.0), "c") == pytest.approx(outside)
    mostly_known = tiny_text + "鑫\n"  # 2 characters in ~1,500 outside the vocabulary
    share = fine_tune(mostly_known, cfg, "d")
    assert 0 < share < cfg.init_max_unknown


def test_time_budget_counts_evaluations_and_the_last_one_fits(tmp_path, tiny_text, monkeypatch):
    """A fake clock: a step takes 1 s, an evaluation 100 s. With a 350 s budget and an evaluation
    every 100 steps the run evaluates at step 100 (t = 200 s), then stops at step 150 (t = 250 s)
    so that its last evaluation ends at 350 s; counting training time only, it would run 350
    steps."""
    from poetgen.lm import train as train_mod

    now = [0.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: now[0])
    real_step, real_eval = train_mod.optimizer_step, train_mod.evaluate_and_save

    def step(*args):
        now[0] += 1.0
        return real_step(*args)

    def evaluate(*args):
        now[0] += 100.0
        return real_eval(*args)

    monkeypatch.setattr(train_mod, "optimizer_step", step)
    monkeypatch.setattr(train_mod, "evaluate_and_save", evaluate)
    result = run(tmp_path, tiny_text, max_steps=0, time_budget=350, eval_every=100)
    assert result.steps == 150 and result.elapsed == 350.0
    # 250 s: the evaluation at step 100 ends at 200 s, where one more step and evaluation would
    # end at 301. That evaluation is the last (the run went on to step 101 and ended at 301).
    result = run(tmp_path / "b", tiny_text, max_steps=0, time_budget=250, eval_every=100)
    assert result.steps == 100 and result.elapsed == 200.0
    # 100 s of starting (reading, building) before the first step is no step's time: with 150 s
    # left for 1 s steps the run trains to 150 s (it stopped after one step, taking the first
    # step for 101 s). Its one evaluation's length is unknown until it has run.
    ids, val, vocab = setup(tiny_text)
    cfg = TrainConfig(**{**TINY_TRAIN, "max_steps": 0, "time_budget": 150, "eval_every": 1000,
                         "min_evals": 1})
    result = train(ids, val, vocab, ModelConfig(**TINY_MODEL), cfg, tmp_path / "c",
                   started=now[0] - 100.0)
    assert result.steps == 50 and result.elapsed == 250.0


def test_lines_are_reshuffled_every_epoch(tmp_path, tiny_text, monkeypatch):
    """Each pass reads the poems in a new order (the same set of lines); running text, or
    shuffle off, keeps the corpus order."""
    from poetgen.lm import train as train_mod

    seen = []
    real = train_mod.epoch_streams

    def spy(train_ids, vocab, config, shuffle, epoch, world):
        streams = real(train_ids, vocab, config, shuffle, epoch, world)
        seen.append((shuffle, vocab.decode(streams.ids.tolist())))
        return streams

    monkeypatch.setattr(train_mod, "epoch_streams", spy)
    ids, _, _ = setup(tiny_text)
    chunks = (ids.numel() // 4 - 2) // 16 + 1
    run(tmp_path / "a", tiny_text, max_steps=2 * chunks + 1, eval_every=1000)
    assert [s for s, _ in seen] == [True] * 3
    orders = [text.split("\n") for _, text in seen]
    assert len({tuple(o[1:-1]) for o in orders}) == 3  # three different orders of whole poems
    poems = set(tiny_text.split("\n"))
    assert all(set(o[1:-1]) <= poems for o in orders)
    seen.clear()
    run(tmp_path / "b", tiny_text, max_steps=chunks + 1, eval_every=1000, shuffle=False)
    assert [s for s, _ in seen] == [False, False] and seen[0][1] == seen[1][1]


# ----------------------------------------------------------------------------------------------
# What a run saves, and what it never saves


def test_divergence_at_an_evaluation_step_saves_nothing_and_says_what_was_kept(tmp_path, tiny_text,
                                                                               monkeypatch):
    """The issue's case: the diverging update lands on an evaluation step. The training loss was
    finite (it is computed before the update), the validation loss is not: nothing is written.
    (A rate of 1e30 diverges in one step; validate() refuses rates above MAX_LR, lifted here.)"""
    import poetgen.lm.config as config_mod

    monkeypatch.setattr(config_mod, "MAX_LR", 1e31)
    run(tmp_path, tiny_text, max_steps=8)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(NonFiniteLossError,
                       match=r"validation loss became nan at step 9; nothing was saved at that "
                             r"step: .*last.safetensors \(step 8\) is left as it was. "
                             r"Lower --lr \(this run's peak: 1e\+30;"):
        run(tmp_path, tiny_text, resume=True, max_steps=9, eval_every=9, lr=1e30)  # see below
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    run(tmp_path, tiny_text, resume=True, max_steps=12)  # the advised resume works
    assert load_checkpoint(tmp_path / "last.safetensors").meta["training"]["step"] == 12


def test_training_evaluates_in_float32_on_every_cpu(tmp_path, tiny_text, monkeypatch):
    """metrics.csv and the choice of `best` must not depend on whether the CPU has bfloat16
    products (lm/inference.py): training's evaluations run the model at "fp32"."""
    import poetgen.lm.train as train_mod

    seen = []
    real = train_mod.evaluate_ids

    def spy(model, *args, **kwargs):
        seen.append(model.inference_precision)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_ids", spy)
    run(tmp_path, tiny_text, max_steps=4)
    assert seen and set(seen) == {"fp32"}


def _absurd_losses(monkeypatch, training_text_too=True):
    """evaluate_ids reads 1e29 nats a character: of the validation pieces, and unless told
    otherwise of the training text's tail too (the list evaluate_and_save gives it)."""
    import poetgen.lm.train as train_mod

    real = train_mod.evaluate_ids

    def absurd(model, vocab, pieces, *args, **kwargs):
        training_text = isinstance(pieces, list)
        result = real(model, vocab, pieces, *args, **kwargs)
        if training_text_too or not training_text:
            result.nats = 1e29 * result.chars
        return result

    monkeypatch.setattr(train_mod, "evaluate_ids", absurd)


def test_an_absurd_but_finite_validation_loss_saves_nothing(tmp_path, tiny_text, monkeypatch):
    """Weights around 1e28 give finite losses around 1e29 bits: as useless as NaN, and stopped
    the same way (the limit is twice the bits of a uniform guess over the vocabulary, when the
    model reads its own training text no better than that guess)."""
    run(tmp_path, tiny_text, max_steps=4)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _absurd_losses(monkeypatch)
    with pytest.raises(NonFiniteLossError, match=r"validation loss became 1\.443e\+29 bits per "
                                                 r"character \(over [0-9.]+, twice a uniform "
                                                 r"guess's\) at step 6; nothing was saved"):
        run(tmp_path, tiny_text, resume=True, max_steps=6)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_absurd_validation_loss_beside_a_low_training_loss_is_over_fitting(tmp_path,
                                                                              tiny_text,
                                                                              monkeypatch):
    """A model of ten poems grows certain of them and its validation loss passes twice a
    uniform guess's while its training loss still falls: that stopped a healthy run as
    divergence, and --resume with a lower --lr stopped again. The run goes on; best is kept."""
    run(tmp_path, tiny_text, max_steps=40)  # learned something: its text under uniform's bits
    best = (tmp_path / "best.safetensors").read_bytes()
    _absurd_losses(monkeypatch, training_text_too=False)
    result = run(tmp_path, tiny_text, resume=True, max_steps=48)
    assert result.steps == 48 and (tmp_path / "best.safetensors").read_bytes() == best
    assert load_checkpoint(tmp_path / "last.safetensors").meta["training"]["step"] == 48


def test_ctrl_c_with_non_finite_weights_saves_nothing(tmp_path, tiny_text, monkeypatch):
    import poetgen.lm.train as train_mod

    def poison_then_interrupt(info):
        if info.step == 6:
            with torch.no_grad():
                next(poison_then_interrupt.model.parameters()).fill_(math.inf)
            os.kill(os.getpid(), signal.SIGINT)

    class Spy(train_mod.CharLSTM):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            poison_then_interrupt.model = self

    monkeypatch.setattr(train_mod, "CharLSTM", Spy)
    with pytest.raises(NonFiniteLossError, match=r"weights hold NaN or infinity after step 6; "
                                                 r"nothing was saved.*\(step 4\)"):
        run(tmp_path, tiny_text, callbacks=Callbacks(on_step=poison_then_interrupt))
    assert load_checkpoint(tmp_path / "last.safetensors").meta["training"]["step"] == 4


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [(int(r["step"]), r["val_bpc"], r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("at", [8, 12])  # an evaluation step, and the last step
def test_an_evaluation_skipped_by_an_interrupt_is_done_on_resume(tmp_path, tiny_text, at):
    run(tmp_path / "a", tiny_text)

    def interrupt(info):
        if info.step == at:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "b", tiny_text, callbacks=Callbacks(on_step=interrupt))
    assert [r[0] for r in _rows(tmp_path / "b")] == [4, 8][: at // 4 - 1]
    result = run(tmp_path / "b", tiny_text, resume=True)
    assert result.best_val_bpc == train_best(tmp_path / "a")
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")  # every row, train loss included
    for name in ("best.safetensors", "last.safetensors"):
        a, b = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        for k in a:  # the start state (burned in at evaluation) included
            assert torch.equal(a[k], b[k]), (name, k)


def train_best(run_dir):
    return load_checkpoint(run_dir / "last.safetensors").meta["training"]["best_val_bpc"]


def test_a_kill_between_the_metrics_row_and_the_checkpoint_loses_no_row(tmp_path, tiny_text,
                                                                        monkeypatch):
    """The row is written first; a kill before `last` is saved leaves a row later than `last`,
    which --resume drops and logs again."""
    import poetgen.lm.train as train_mod

    run(tmp_path / "a", tiny_text)
    real_save = train_mod.save_checkpoint

    def killed_at_step_8(path, model, vocab, meta, *a, **k):
        if meta["training"]["step"] == 8 and path.name == "last.safetensors":
            raise KeyboardInterrupt  # stands in for kill -9: nothing after it runs
        return real_save(path, model, vocab, meta, *a, **k)

    monkeypatch.setattr(train_mod, "save_checkpoint", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", tiny_text)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert [r[0] for r in _rows(tmp_path / "b")] == [4, 8]
    run(tmp_path / "b", tiny_text, resume=True)
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


# ----------------------------------------------------------------------------------------------
# The run directory: a lock, stale temporary files, file-system faults


def test_a_second_trainer_is_refused_until_the_first_dies(tmp_path, tiny_text):
    """Another process holds the lock; kill -9 releases it (the OS does), and training goes on."""
    import subprocess
    import sys

    from poetgen.errors import RunBusyError

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from poetgen.lm.rundir import RunLock\n"
         f"with RunLock({str(tmp_path)!r}):\n    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError, match=f"in use by another poetgen train \\(PID "
                                               f"{holder.pid}\\)"):
            run(tmp_path, tiny_text, max_steps=4)
    finally:
        holder.kill()
        holder.wait()
    run(tmp_path, tiny_text, max_steps=4)
    assert _rows(tmp_path) == [(4,) + _rows(tmp_path)[0][1:]]


def test_stale_temporary_files_are_removed_by_the_next_run(tmp_path, tiny_text):
    run(tmp_path, tiny_text, max_steps=4)
    stale = tmp_path / ".last.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    started = {}
    run(tmp_path, tiny_text, resume=True, max_steps=8,
        callbacks=Callbacks(on_start=lambda info: started.update(info)))
    assert not stale.exists() and started["removed"] == [stale]


def test_file_system_faults_in_a_run_are_one_line(tmp_path, tiny_text, monkeypatch):
    from poetgen import files
    from poetgen.errors import FileSystemError

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileSystemError, match="is a file where a directory is needed"):
        run(tmp_path / "file", tiny_text, max_steps=4)
    (tmp_path / "d" / "metrics.csv").mkdir(parents=True)
    with pytest.raises(FileSystemError, match="metrics.csv .*a directory where a file is needed"):
        run(tmp_path / "d", tiny_text, max_steps=4)

    run(tmp_path / "full", tiny_text, max_steps=4)
    before = (tmp_path / "full" / "last.safetensors").read_bytes()
    real_fsync = files.os.fsync

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(FileSystemError, match="cannot write .* the disk is full"):
        run(tmp_path / "full", tiny_text, resume=True, max_steps=8)
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert (tmp_path / "full" / "last.safetensors").read_bytes() == before
    assert not [p for p in (tmp_path / "full").iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# A resume checks what it restores


def test_resume_with_another_batch_size_is_refused(tmp_path, tiny_text):
    run(tmp_path, tiny_text, max_steps=4)
    with pytest.raises(ConfigError, match="continues the run's 4 streams; drop --batch-size"):
        run(tmp_path, tiny_text, resume=True, max_steps=8, batch_size=2)


@pytest.mark.parametrize("change, message", [
    (lambda h: h["extra.rng"].update(dtype="I8"), "random state is missing or malformed"),
    (lambda h: h["extra.train_h"].update(shape=h["extra.train_h"]["shape"][::-1]),
     "LSTM state train_h"),
    (lambda h: h.update({"extra.optim.99.exp_avg": h.pop("extra.optim.0.exp_avg")}),
     "belongs to no parameter"),
])
def test_resume_refuses_malformed_training_state(tmp_path, tiny_text, change, message):
    from conftest import rewrite_header

    run(tmp_path, tiny_text, max_steps=4)
    rewrite_header(tmp_path / "last.safetensors", change_header=change)
    with pytest.raises(CheckpointError, match=message):
        run(tmp_path, tiny_text, resume=True, max_steps=8)


def test_a_fraction_of_an_epoch_stops_where_the_progress_bar_says(tmp_path, tiny_text):
    """epochs = 1.3: the run stops at the first step that reaches 1.3 epochs, and total_steps
    (the progress bar's end) is that step; it said the whole part of 1.3 epochs, one fewer."""
    started, steps = {}, []
    result = run(tmp_path, tiny_text, max_steps=0, epochs=1.3,
                 callbacks=Callbacks(on_start=started.update,
                                     on_step=lambda info: steps.append(info.step)))
    chunks = started["chunks_per_epoch"]
    assert 1.3 * chunks != int(1.3 * chunks)  # a fraction of a step: the case in question
    assert steps[-1] == result.steps == started["total_steps"] == math.ceil(1.3 * chunks)

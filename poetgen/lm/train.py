"""Training: truncated BPTT over contiguous streams, AdamW, warm-up + cosine decay, clipping.

The loop is the classic one from pytorch/examples' word_language_model:

    for each chunk of `bptt` rows of the batchified stream (see corpus.batchify):
        state = detach(state)             # keep the values, cut the graph: truncated BPTT
        outputs, state = model(x, state)  # the state flows on into the next chunk
        loss(outputs, y).backward(); clip the gradient norm; optimizer step

Everything a resumed run needs is in `last.safetensors`: weights, optimizer moments, the carried
LSTM state and the RNG state. The data position and learning rate follow from the step count and
the elapsed time, so a run interrupted and resumed ends with the same weights as one that was not.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from poetgen.lm.checkpoint import load_checkpoint, save_checkpoint
from poetgen.lm.config import REGULARIZATION, ModelConfig, TrainConfig, to_dict
from poetgen.lm.corpus import Vocab, batchify, detect_text_kind, get_chunk, num_chunks
from poetgen.errors import CheckpointError, NonFiniteLossError
from poetgen.lm.evaluate import evaluate_ids
from poetgen.lm.model import CharLSTM, burn_in_start_state
from poetgen.lm.sample import generate

METRICS_FIELDS = ["step", "train_loss", "train_bpc", "val_bpc", "lr", "chars_per_s", "elapsed_s"]
LN2 = math.log(2)


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once `last` is saved; the CLI exits with code 130."""

    def __init__(self, checkpoint: Path, step: int):
        super().__init__(f"interrupted at step {step}; saved {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


@dataclass
class StepInfo:
    step: int
    total_steps: int | None  # None when only a time budget bounds the run
    loss: float  # nats per character, this step
    lr: float
    chars_per_s: float
    elapsed: float


@dataclass
class EvalInfo:
    step: int
    val_bpc: float
    best_val_bpc: float
    train_bpc: float
    sample: str


@dataclass
class TrainResult:
    steps: int
    best_val_bpc: float
    last_val_bpc: float
    run_dir: Path
    parameters: int
    chars_per_s: float
    elapsed: float


@dataclass
class Callbacks:
    on_start: Callable[[dict], None] = lambda info: None
    on_step: Callable[[StepInfo], None] = lambda info: None
    on_eval: Callable[[EvalInfo], None] = lambda info: None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from poetgen.errors import ConfigError

        raise ConfigError("--device cuda: no CUDA GPU is available here; use --device auto or cpu")
    return torch.device(name)


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to lr * min_lr_ratio at progress 1."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def run_progress(cfg: TrainConfig, step: int, elapsed: float, chunks_per_epoch: int) -> float:
    """How far through the run we are (0..1): the nearest of the step, epoch and time limits."""
    fractions = [0.0]
    if cfg.max_steps:
        fractions.append(step / cfg.max_steps)
    if cfg.epochs:
        fractions.append(step / (cfg.epochs * chunks_per_epoch))
    if cfg.time_budget:
        fractions.append(elapsed / cfg.time_budget)
    return max(fractions)


def make_optimizer(model: CharLSTM, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = model.start_h.is_cuda  # one kernel for all parameters instead of several per tensor
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused)


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW moments and step counts as flat named tensors (safetensors holds no pickles)."""
    out = {}
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{index}.{key}"] = torch.as_tensor(value).clone()
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = opt.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    opt.load_state_dict(state_dict)


def corpus_fingerprint(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]


def burn_in_ids(train_ids: torch.Tensor, vocab: Vocab, length: int = 2048) -> torch.Tensor:
    """The last `length` training characters, ending just after the last newline."""
    ids = train_ids
    newline = vocab.newline_id
    if newline is not None:
        ends = (ids == newline).nonzero()
        if ends.numel():
            ids = ids[: int(ends[-1]) + 1]
    return ids[-length:]


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a step is never torn."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second press is final

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class _Run:
    """Where a run stands: what `last.safetensors` holds, so that it can be resumed exactly."""

    model: CharLSTM
    optimizer: torch.optim.AdamW
    state: tuple[torch.Tensor, torch.Tensor]  # the LSTM state carried from chunk to chunk
    step: int = 0
    elapsed: float = 0.0  # seconds of training (evaluations not counted)
    best: float = math.inf  # lowest validation bpc so far
    init: dict | None = None  # where the starting weights came from, when not random


def _start_run(vocab: Vocab, model_config: ModelConfig, config: TrainConfig, last_path: Path,
               fingerprint: str, device: torch.device, resume: bool,
               init: str | Path | None) -> _Run:
    """A new run (random or `init` weights), or the run saved in `last_path` (resume)."""
    torch.manual_seed(config.seed)
    if not resume:
        if last_path.exists():
            raise CheckpointError(f"{last_path.parent} already holds a run; pass --resume to "
                                  "continue it, or choose another --out directory")
        init_meta = None
        if init is not None:
            model, init_meta = _initial_model(init, vocab, model_config)
        else:
            model = CharLSTM(replace(model_config, vocab_size=len(vocab)))
        model = model.to(device)
        return _Run(model, make_optimizer(model, config), model.zero_state(config.batch_size),
                    init=init_meta)
    ckpt = load_checkpoint(last_path, device=device, with_extra=True)
    training = ckpt.meta.get("training", {})
    if training.get("corpus") != fingerprint:
        raise CheckpointError(f"{last_path}: was trained on a different corpus or vocabulary; "
                              "resume with the same CORPUS, or start a new --out directory")
    optimizer = make_optimizer(ckpt.model, config)
    restore_optimizer(optimizer, {k: v.to(device) for k, v in ckpt.extra.items()})
    torch.set_rng_state(ckpt.extra["rng"])
    best = training["best_val_bpc"]
    return _Run(ckpt.model, optimizer,
                (ckpt.extra["train_h"].to(device), ckpt.extra["train_c"].to(device)),
                training["step"], training["elapsed"], math.inf if best is None else best,
                ckpt.meta.get("init"))


def train(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: Vocab, model_config: ModelConfig,
          config: TrainConfig, run_dir: str | Path, resume: bool = False,
          callbacks: Callbacks | None = None, init: str | Path | None = None) -> TrainResult:
    """Train (or resume) a model on `train_ids`, validating on `val_ids`, saving into `run_dir`.

    `init` starts from a trained checkpoint's weights instead of random ones (a second stage
    with new settings, or fine-tuning): its shapes and vocabulary must match, and only the
    shape-free REGULARIZATION fields (dropout, weight_drop) are taken from `model_config`. The
    optimizer and schedule start afresh.
    """
    cb = callbacks or Callbacks()
    run_dir = Path(run_dir)
    config.validate()
    if model_config.text_kind == "auto":  # the checkpoint records what was decided
        model_config = replace(model_config, text_kind=detect_text_kind(train_ids, vocab.newline_id))
    device = pick_device(config.device)
    last_path, best_path = run_dir / "last.safetensors", run_dir / "best.safetensors"
    fingerprint = corpus_fingerprint(train_ids)
    run = _start_run(vocab, model_config, config, last_path, fingerprint, device, resume, init)
    model, optimizer = run.model, run.optimizer
    model.train()
    data = batchify(train_ids, config.batch_size).to(device)  # (rows, B)
    chunks = num_chunks(data, config.bptt)
    val_ids = val_ids.cpu()
    burn_ids = burn_in_ids(train_ids, vocab)
    metrics_path = run_dir / "metrics.csv"
    _prepare_metrics(metrics_path, keep_until=run.step if resume else -1)

    total_steps = None
    if config.max_steps or config.epochs:
        limits = [config.max_steps or math.inf, (config.epochs * chunks) or math.inf]
        total_steps = int(min(limits))
    use_amp = device.type == "cuda" and config.precision == "bf16"
    if device.type == "cuda":  # TF32 matmuls: float32 range and accumulation, several times faster
        torch.set_float32_matmul_precision("high")
    cb.on_start({"device": str(device), "parameters": model.num_parameters(), "vocab": len(vocab),
                 "train_chars": train_ids.numel(), "val_chars": val_ids.numel(),
                 "chunks_per_epoch": chunks, "total_steps": total_steps, "start_step": run.step,
                 "time_budget": config.time_budget})

    def meta(val_bpc: float) -> dict:
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 (strict JSON has no NaN)
        return {"train_config": to_dict(config), "init": run.init,
                "training": {"step": run.step, "elapsed": run.elapsed,
                             "best_val_bpc": finite(run.best), "val_bpc": finite(val_bpc),
                             "corpus": fingerprint, "epochs": run.step / chunks,
                             "train_chars": int(train_ids.numel())}}

    def save_last(val_bpc: float) -> None:
        extra = optimizer_tensors(optimizer)
        extra.update(train_h=run.state[0], train_c=run.state[1], rng=torch.get_rng_state())
        save_checkpoint(last_path, model, vocab, meta(val_bpc), extra)

    def validate_and_save() -> float:
        burn_in_start_state(model, burn_ids)
        val_bpc = evaluate_ids(model, vocab, [val_ids]).bpc
        if val_bpc < run.best:
            run.best = val_bpc
            save_checkpoint(best_path, model, vocab, meta(val_bpc))
        save_last(val_bpc)
        return val_bpc

    window_chars, window_start = 0, time.perf_counter()
    chars_per_s, last_val = 0.0, math.nan
    loss_sum, loss_steps = 0.0, 0  # mean training loss since the last evaluation
    with _StopFlag() as stop:
        while (progress := run_progress(config, run.step, run.elapsed, chunks)) < 1.0:
            t0 = time.perf_counter()
            index = run.step % chunks
            if index == 0:  # a new pass starts the streams afresh
                run.state = model.zero_state(config.batch_size)
            lr = learning_rate(config, run.step, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_chunk(data, index, config.bptt)
            run.state = (run.state[0].detach(), run.state[1].detach())  # truncate the graph
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs, run.state = model(x, run.state)
                loss = model.loss(outputs, y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss became {loss.item()} at step {run.step + 1}; "
                    f"{last_path if last_path.exists() else 'no checkpoint'} is left as it was. "
                    "Lower --lr (e.g. halve it) or --clip, then --resume")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            run.step += 1
            step_loss = loss.item()
            loss_sum, loss_steps = loss_sum + step_loss, loss_steps + 1
            run.elapsed += time.perf_counter() - t0
            window_chars += x.numel()
            if (now := time.perf_counter()) - window_start >= 2.0:
                chars_per_s = window_chars / (now - window_start)
                window_chars, window_start = 0, now
            cb.on_step(StepInfo(run.step, total_steps, step_loss, lr, chars_per_s, run.elapsed))

            finished = run_progress(config, run.step, run.elapsed, chunks) >= 1.0
            if stop.signal is not None:
                save_last(last_val)
                raise TrainingInterrupted(last_path, run.step)
            if run.step % config.eval_every == 0 or finished:
                t_eval = time.perf_counter()
                last_val = validate_and_save()
                sample = generate(model, vocab, n=1, max_chars=config.sample_chars,  # a preview
                                  temperature=0.8, seed=config.seed + run.step,
                                  stop_at_newline=False)[0].text
                model.train()
                train_loss = loss_sum / max(1, loss_steps)
                loss_sum, loss_steps = 0.0, 0
                _append_metrics(metrics_path, [run.step, train_loss, train_loss / LN2, last_val,
                                               lr, chars_per_s, run.elapsed])
                cb.on_eval(EvalInfo(run.step, last_val, run.best, train_loss / LN2, sample))
                window_start += time.perf_counter() - t_eval  # evaluation is not training speed
    return TrainResult(run.step, run.best, last_val, run_dir, model.num_parameters(), chars_per_s,
                       run.elapsed)


def _initial_model(path: str | Path, vocab: Vocab,
                   model_config: ModelConfig) -> tuple[CharLSTM, dict]:
    """A trained checkpoint's model with `model_config`'s regularization, and a note of where it
    came from."""
    source = load_checkpoint(path)
    if source.vocab.chars != vocab.chars:
        raise CheckpointError(f"{source.path}: --init needs the run to use the checkpoint's own "
                              "vocabulary; build it with Vocab.from_list(meta['vocab'])")
    model = CharLSTM(replace(source.model.config,
                             **{k: getattr(model_config, k) for k in REGULARIZATION}))
    model.load_state_dict(source.model.state_dict())
    return model, {"from": str(source.path), "sha256": source.meta.get("sha256"),
                   "step": source.meta.get("training", {}).get("step")}


def _prepare_metrics(path: Path, keep_until: int) -> None:
    """Start metrics.csv, or on resume drop rows logged after the checkpoint we resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if keep_until >= 0 and path.exists():
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _append_metrics(path: Path, row: list) -> None:
    with path.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])

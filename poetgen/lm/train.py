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
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from poetgen.errors import CheckpointError, NonFiniteLossError
from poetgen.files import atomic_open
from poetgen.lm.checkpoint import load_checkpoint, save_checkpoint
from poetgen.lm.config import REGULARIZATION, ModelConfig, TrainConfig, to_dict
from poetgen.lm.corpus import Vocab, batchify, detect_text_kind, get_chunk, num_chunks
from poetgen.lm.evaluate import LN2, evaluate_ids
from poetgen.lm.model import CharLSTM, State, burn_in_start_state, evaluating
from poetgen.lm.sample import generate

METRICS_FIELDS = ["step", "train_loss", "train_bpc", "val_bpc", "lr", "chars_per_s", "elapsed_s"]


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

    @property
    def bpc(self) -> float:
        return self.loss / LN2


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
    """The torch device for auto | cpu | cuda | cuda:N | mps, or a ConfigError saying what this
    machine has instead."""
    from poetgen.errors import ConfigError
    from poetgen.lm.config import DEVICE_NAMES, is_device_name

    if not is_device_name(name):
        raise ConfigError(f"--device {name}: use {DEVICE_NAMES}")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"--device {name}: no CUDA GPU is available here; "
                              "use --device auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}")
    if name == "mps" and not mps:
        raise ConfigError("--device mps: Apple's MPS is not available here; use --device auto or cpu")
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


def evaluation_due(cfg: TrainConfig, step: int, elapsed_before: float, elapsed: float,
                   steps: int | None) -> bool:
    """Whether the step that just ended (`step`, training time `elapsed_before` -> `elapsed`)
    is followed by a validation: every `eval_every` steps, and every 1/`min_evals` of the run's
    step limit or time budget, whichever comes first, so that a short run draws a curve."""
    every = cfg.eval_every
    if steps:
        every = min(every, max(1, math.ceil(steps / cfg.min_evals)))
    if step % every == 0:
        return True
    if cfg.time_budget:
        interval = cfg.time_budget / cfg.min_evals
        return int(elapsed // interval) > int(elapsed_before // interval)
    return False


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
    state: State  # the LSTM state carried from chunk to chunk
    step: int = 0
    elapsed: float = 0.0  # seconds of training (evaluations not counted)
    best: float = math.inf  # lowest validation bpc so far
    init: dict | None = None  # where the starting weights came from, when not random


@dataclass(frozen=True)
class _Checkpoints:
    """Where a run saves, and what every checkpoint's header says about the run."""

    run_dir: Path
    vocab: Vocab
    config: TrainConfig
    corpus: str  # fingerprint of the training ids: a resume on another corpus is refused
    train_chars: int
    chunks_per_epoch: int

    @property
    def last(self) -> Path:
        return self.run_dir / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.safetensors"

    def save_last(self, run: _Run, val_bpc: float) -> None:
        """Weights plus everything an exact resume needs: optimizer moments, state, RNG."""
        extra = optimizer_tensors(run.optimizer)
        extra.update(train_h=run.state[0], train_c=run.state[1], rng=torch.get_rng_state())
        save_checkpoint(self.last, run.model, self.vocab, self._meta(run, val_bpc), extra)

    def save_best(self, run: _Run, val_bpc: float) -> None:
        save_checkpoint(self.best, run.model, self.vocab, self._meta(run, val_bpc))

    def _meta(self, run: _Run, val_bpc: float) -> dict:
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 (strict JSON has no NaN)
        return {"train_config": to_dict(self.config), "init": run.init,
                "training": {"step": run.step, "elapsed": run.elapsed,
                             "best_val_bpc": finite(run.best), "val_bpc": finite(val_bpc),
                             "corpus": self.corpus, "epochs": run.step / self.chunks_per_epoch,
                             "train_chars": self.train_chars}}


class Throughput:
    """Training characters per second, measured over windows of at least `window` seconds.

    Time inside `paused()` (evaluation, sampling, saving) is left out: it is not training speed.
    """

    def __init__(self, window: float = 2.0):
        self.window = window
        self.chars_per_s = 0.0  # of the last complete window; 0 until one has passed
        self._chars, self._start = 0, time.perf_counter()

    def count(self, chars: int) -> None:
        self._chars += chars
        if (now := time.perf_counter()) - self._start >= self.window:
            self.chars_per_s = self._chars / (now - self._start)
            self._chars, self._start = 0, now

    @contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - t0


def sgd_step(model: CharLSTM, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             state: State, lr: float, clip: float, bf16: bool = False) -> tuple[float, State]:
    """One step of truncated BPTT on the chunk `x` -> `y`, starting from the carried `state`.

    Forward, loss, backward, clip the global gradient norm to `clip`, AdamW update at `lr`.
    Returns the loss (nats per character) and the state to carry into the next chunk. A loss that
    is not finite is returned without updating anything: the caller stops the run.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    state = (state[0].detach(), state[1].detach())  # keep the values, cut the graph
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs, state = model(x, state)
        loss = model.loss(outputs, y)
    if not torch.isfinite(loss):
        return loss.item(), state
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item(), state


def evaluate_and_save(run: _Run, checkpoints: _Checkpoints, val_ids: torch.Tensor,
                      burn_ids: torch.Tensor) -> float:
    """Validation bpc (from a start state burned in anew); saves `best` when it is the lowest so
    far, and `last` always."""
    burn_in_start_state(run.model, burn_ids)
    val_bpc = evaluate_ids(run.model, [val_ids]).bpc
    if val_bpc < run.best:
        run.best = val_bpc
        checkpoints.save_best(run, val_bpc)
    checkpoints.save_last(run, val_bpc)
    return val_bpc


def preview(model: CharLSTM, vocab: Vocab, config: TrainConfig, step: int) -> str:
    """A short free sample, shown at each evaluation to see what the model writes by now."""
    with evaluating(model):
        return generate(model, vocab, n=1, max_chars=config.sample_chars, temperature=0.8,
                        seed=config.seed + step, stop_at_newline=False)[0].text


def total_steps(config: TrainConfig, chunks_per_epoch: int) -> int | None:
    """The step count the run stops at, or None when only a time budget bounds it."""
    if not (config.max_steps or config.epochs):
        return None
    return int(min(config.max_steps or math.inf, (config.epochs * chunks_per_epoch) or math.inf))


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
    # -- setup: the device, the data as parallel streams, the model and optimizer ---------------
    cb = callbacks or Callbacks()
    config.validate()
    if model_config.text_kind == "auto":  # the checkpoint records what was decided
        model_config = replace(model_config, text_kind=detect_text_kind(train_ids, vocab.newline_id))
    device = pick_device(config.device)
    if device.type == "cuda":  # TF32 matmuls: float32 range and accumulation, several times faster
        torch.set_float32_matmul_precision("high")
    bf16 = device.type == "cuda" and config.precision == "bf16"
    data = batchify(train_ids, config.batch_size).to(device)  # (rows, B)
    chunks = num_chunks(data, config.bptt)
    val_ids, burn_ids = val_ids.cpu(), burn_in_ids(train_ids, vocab)
    checkpoints = _Checkpoints(Path(run_dir), vocab, config, corpus_fingerprint(train_ids),
                               int(train_ids.numel()), chunks)
    run = _start_run(vocab, model_config, config, checkpoints.last, checkpoints.corpus, device,
                     resume, init)
    run.model.train()
    metrics_path = checkpoints.run_dir / "metrics.csv"
    _prepare_metrics(metrics_path, keep_until=run.step if resume else -1)
    steps = total_steps(config, chunks)
    meter = Throughput()
    losses: list[float] = []  # training losses since the last evaluation
    last_val = math.nan
    with _StopFlag() as stop:
        # Announced once Ctrl-C is caught: from here on an interrupt saves `last`.
        cb.on_start({"device": str(device), "parameters": run.model.num_parameters(),
                     "vocab": len(vocab), "train_chars": train_ids.numel(),
                     "val_chars": val_ids.numel(), "chunks_per_epoch": chunks,
                     "total_steps": steps, "start_step": run.step,
                     "text_kind": run.model.config.text_kind, "time_budget": config.time_budget})
        while (progress := run_progress(config, run.step, run.elapsed, chunks)) < 1.0:
            # -- one SGD step on the next chunk of every stream --------------------------------
            t0, elapsed_before = time.perf_counter(), run.elapsed
            index = run.step % chunks
            if index == 0:  # a new pass starts the streams afresh
                run.state = run.model.zero_state(config.batch_size)
            x, y = get_chunk(data, index, config.bptt)
            lr = learning_rate(config, run.step, progress)
            loss, run.state = sgd_step(run.model, run.optimizer, x, y, run.state, lr, config.clip,
                                       bf16)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss became {loss} at step {run.step + 1}; "
                    f"{checkpoints.last if checkpoints.last.exists() else 'no checkpoint'} is "
                    "left as it was. Lower --lr (e.g. halve it) or --clip, then --resume")
            run.step += 1
            run.elapsed += time.perf_counter() - t0
            losses.append(loss)
            meter.count(x.numel())
            cb.on_step(StepInfo(run.step, steps, loss, lr, meter.chars_per_s, run.elapsed))

            # -- Ctrl-C or SIGTERM: save where we are, then stop -------------------------------
            if stop.signal is not None:
                checkpoints.save_last(run, last_val)
                raise TrainingInterrupted(checkpoints.last, run.step)

            # -- when due (evaluation_due) and at the end: validate, checkpoint, log, preview ----
            finished = run_progress(config, run.step, run.elapsed, chunks) >= 1.0
            if finished or evaluation_due(config, run.step, elapsed_before, run.elapsed, steps):
                with meter.paused():
                    last_val = evaluate_and_save(run, checkpoints, val_ids, burn_ids)
                    sample = preview(run.model, vocab, config, run.step)
                    train_loss = sum(losses) / max(1, len(losses))
                    losses.clear()
                    _append_metrics(metrics_path, [run.step, train_loss, train_loss / LN2,
                                                   last_val, lr, meter.chars_per_s, run.elapsed])
                    cb.on_eval(EvalInfo(run.step, last_val, run.best, train_loss / LN2, sample))
    return TrainResult(run.step, run.best, last_val, checkpoints.run_dir,
                       run.model.num_parameters(), meter.chars_per_s, run.elapsed)


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
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _append_metrics(path: Path, row: list) -> None:
    with path.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])

"""Training: truncated BPTT over contiguous streams, AdamW, warm-up + cosine decay, clipping.

The loop is the classic one from pytorch/examples' word_language_model:

    for each chunk of `bptt` rows of the parallel streams (see corpus.Streams):
        state = detach(state)             # keep the values, cut the graph: truncated BPTT
        outputs, state = model(x, state)  # the state flows on into the next chunk
        loss(outputs, y).backward(); clip the gradient norm; optimizer step

Everything a resumed run needs is in `last.safetensors`: weights, optimizer moments, the carried
LSTM state, the RNG state and the peak learning rate (fixed from the run's length when --lr is
0). The data position and the rate's schedule follow from the step count and the elapsed time,
so a run interrupted and resumed ends with the same weights as one that was not (under a step or
epoch limit; a time budget's schedule depends on the clock).
An evaluation an interruption skipped (at the last step, or at an evaluation step) is done first
on `--resume`, so the metrics and `best` are those of an uninterrupted run.

What is saved is never poison: a non-finite training loss, a non-finite validation loss or
non-finite weights stop the run before anything is written at that step, and the message says
which step the checkpoints on disk still hold. The run directory is locked while training (see
rundir.py), and metrics.csv gets each evaluation's row before its checkpoints: a run killed
between the two drops the row on `--resume` (it is later than `last`) and logs it again.

Launched by torchrun with several processes, the same loop trains with DistributedDataParallel:
each rank reads its share of the streams; rank 0 alone evaluates, saves, logs and reports, and
decides when the run stops. What the ranks share, and when, is in distributed.py.
"""

from __future__ import annotations

import csv
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from poetgen.errors import (CheckpointError, ConfigError, NonFiniteLossError, PoetgenError,
                            file_error)
from poetgen.files import atomic_open
from poetgen.lm import distributed
from poetgen.lm.checkpoint import (check_resumable, last_of_run, load_checkpoint, read_meta,
                                   save_checkpoint)
from poetgen.lm.config import REGULARIZATION, ModelConfig, TrainConfig, auto_lr, to_dict
from poetgen.lm.corpus import (Ids, Streams, Vocab, as_array, count_id, detect_text_kind,
                               fingerprint, id_pieces, shuffle_lines, tail_after_newline)
from poetgen.lm.distributed import World
from poetgen.lm.evaluate import LN2, evaluate_ids
from poetgen.lm.model import CharLSTM, State, burn_in_start_state, evaluating
from poetgen.lm.rundir import RunLock
from poetgen.lm.sample import generate

ATTENTION_STATE = ("train_memory", "train_in_poem")  # names of a state's attention entries in `last`
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


def pick_device(name: str, setting: str = "--device") -> torch.device:
    """The torch device for auto | cpu | cuda | cuda:N | mps, or a ConfigError saying what this
    machine has instead, naming the setting as the caller spells it (`device` in Python)."""
    from poetgen.lm.config import DEVICE_NAMES, is_device_name

    if not isinstance(name, str) or not is_device_name(name):
        raise ConfigError(f"{setting} {name}: use {DEVICE_NAMES}")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"{setting} {name}: no CUDA GPU is available here; "
                              f"use {setting} auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"{setting} {name}: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}")
    if name == "mps" and not mps:
        raise ConfigError(f"{setting} mps: Apple's MPS is not available here; use {setting} auto "
                          "or cpu")
    return torch.device(name)


def learning_rate(cfg: TrainConfig, step: int, progress: float, peak: float) -> float:
    """Linear warm-up over `warmup_steps` to `peak` (peak_lr), then cosine decay to
    peak * min_lr_ratio at progress 1."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def planned_steps(cfg: TrainConfig, step: int, elapsed: float, chunks_per_epoch: int,
                  since: tuple[int, float] | None) -> float:
    """The optimizer steps the run will make: the nearest of its step and epoch limits and, under
    a time budget, `step` plus the rest of the budget at the pace since `since` (step, elapsed),
    the end of this process's first step: the time before (starting Python, reading the corpus,
    a first step's allocations) is no pace. Unknown before a step has been timed: infinity."""
    limits = [step_limit(cfg, chunks_per_epoch)]
    steps, seconds = (0, 0.0) if since is None else (step - since[0], elapsed - since[1])
    if cfg.time_budget and steps > 0 and seconds > 0:
        limits.append(step + max(0.0, cfg.time_budget - elapsed) * steps / seconds)
    return min(limits)


def peak_lr(cfg: TrainConfig, planned: float, fixed: float = 0.0, cell: str = "lstm") -> float:
    """cfg.lr (a resume may set a new one); for lr = 0, the peak `fixed` earlier in the run, else
    the auto_lr of the `planned` steps."""
    if cfg.lr > 0:
        return cfg.lr
    return fixed if fixed > 0 else auto_lr(planned, cell)


def step_limit(cfg: TrainConfig, chunks_per_epoch: int) -> float:
    """The nearer of the step and epoch limits, in optimizer steps (not whole for a fraction of
    an epoch); infinity when neither is set."""
    return min(cfg.max_steps or math.inf, cfg.epochs * chunks_per_epoch or math.inf)


def run_progress(cfg: TrainConfig, step: int, elapsed: float, chunks_per_epoch: int) -> float:
    """How far through the run we are (0..1): the nearest of the step, epoch and time limits."""
    return max(step / step_limit(cfg, chunks_per_epoch),
               elapsed / cfg.time_budget if cfg.time_budget else 0.0)


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


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      source: Path) -> None:
    """Put saved AdamW moments back, each checked against the parameter it belongs to."""
    params = [p for group in opt.param_groups for p in group["params"]]
    shapes = {"exp_avg": None, "exp_avg_sq": None, "step": ()}  # None: the parameter's shape
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = (name.split(".", 2) + ["", ""])[:3]
        if not (index.isdigit() and int(index) < len(params) and key in shapes):
            raise CheckpointError(f"{source}: optimizer state {name!r} belongs to no parameter of "
                                  "this model; the checkpoint is inconsistent")
        want = shapes[key] if shapes[key] is not None else tuple(params[int(index)].shape)
        if tuple(value.shape) != want or not value.is_floating_point():
            raise CheckpointError(f"{source}: optimizer state {name} is {value.dtype} "
                                  f"{list(value.shape)}, not float {list(want)}; the checkpoint "
                                  "is inconsistent")
        state.setdefault(int(index), {})[key] = value
    state_dict = opt.state_dict()
    state_dict["state"] = state
    opt.load_state_dict(state_dict)


def unknown_share(ids: Ids, vocab: Vocab) -> float:
    """The share of `ids` that are the unknown token (characters outside `vocab`)."""
    return count_id(ids, vocab.unk_id) / max(1, len(as_array(ids)))


def check_init_coverage(ids: Ids, vocab: Vocab, config: TrainConfig, source: str | Path) -> float:
    """The share of a fine-tuning corpus outside the --init checkpoint's vocabulary; refuses one
    above `config.init_max_unknown`, since every such character trains as the unknown token."""
    share = unknown_share(ids, vocab)
    if share > config.init_max_unknown:
        raise ConfigError(
            f"{100 * share:.1f}% of the training characters are outside the vocabulary of "
            f"{source} ({len(vocab) - 1:,} characters) and would all train as the unknown token "
            f"(the limit is {100 * config.init_max_unknown:g}%); fine-tune on text in the "
            "checkpoint's script and language, or pass --init-max-unknown 1 to train anyway")
    return share


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a step is never torn.

    A second signal is final (the default handler: Ctrl-C twice quits at once), except under a
    launcher (`final_second=False`): torchrun forwards the Ctrl-C that the terminal also sent to
    every process, so each gets two at once, and it kills the processes itself if they are slow.
    """

    def __init__(self, final_second: bool = True):
        self.signal: int | None = None
        self.final_second = final_second
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        if self.final_second:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

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
    elapsed: float = 0.0  # wall-clock seconds of the run, evaluations and saving included
    best: float = math.inf  # lowest validation bpc so far
    init: dict | None = None  # where the starting weights came from, when not random
    eval_pending: bool = False  # the latest step is due an evaluation that has not run yet
    lr: float = 0.0  # of the latest step; chars_per_s likewise: the metrics row needs them
    chars_per_s: float = 0.0
    loss_sum: float = 0.0  # training losses since the latest evaluation, for its metrics row
    loss_steps: int = 0
    world_size: int = 1  # processes (ranks) that trained it, last
    peak_lr: float = 0.0  # lr = 0's peak, fixed at the end of the warm-up; 0 until then


@dataclass(frozen=True)
class _Checkpoints:
    """Where a run saves, and what every checkpoint's header says about the run."""

    run_dir: Path
    vocab: Vocab
    config: TrainConfig
    corpus: str  # fingerprint of the training ids: a resume on another corpus is refused
    train_chars: int
    chunks_per_epoch: int
    val: str = ""  # fingerprint of the validation ids: `best` is the best on one validation text

    @property
    def last(self) -> Path:
        return self.run_dir / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.safetensors"

    def save_last(self, run: _Run, val_bpc: float, state: State, rngs: torch.Tensor) -> None:
        """Weights plus everything an exact resume needs: optimizer moments, the state of every
        stream `state` (each entry with all batch_size streams in dim 1) and the RNG state of
        every rank `rngs` (ranks, n): see distributed.gather_state."""
        self._refuse_non_finite(run)
        extra = optimizer_tensors(run.optimizer)
        extra.update(train_h=state[0], train_c=state[1], rng=rngs[0].clone())
        extra.update(zip(ATTENTION_STATE, state[2:]))  # a model with attention: its memory
        if len(rngs) > 1:
            extra["rng_ranks"] = rngs
        save_checkpoint(self.last, run.model, self.vocab, self._meta(run, val_bpc), extra)

    def save_best(self, run: _Run, val_bpc: float) -> None:
        self._refuse_non_finite(run)
        save_checkpoint(self.best, run.model, self.vocab, self._meta(run, val_bpc))

    def _meta(self, run: _Run, val_bpc: float) -> dict:
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 (strict JSON has no NaN)
        return {"train_config": to_dict(self.config), "init": run.init,
                "training": {"step": run.step, "elapsed": run.elapsed,
                             "best_val_bpc": finite(run.best), "val_bpc": finite(val_bpc),
                             "eval_pending": run.eval_pending, "lr": run.lr,
                             "peak_lr": run.peak_lr,
                             "chars_per_s": run.chars_per_s, "loss_sum": run.loss_sum,
                             "loss_steps": run.loss_steps,
                             "corpus": self.corpus, "val": self.val,
                             "epochs": run.step / self.chunks_per_epoch,
                             "train_chars": self.train_chars, "world_size": run.world_size}}

    def _refuse_non_finite(self, run: _Run) -> None:
        if not all(torch.isfinite(p).all() for p in run.model.parameters()):
            raise NonFiniteLossError(f"the weights hold NaN or infinity after step {run.step}; "
                                     f"nothing was saved at that step: {self.kept()}. "
                                     f"{_advice(run, self.config)}")

    def kept(self) -> str:
        """What the run directory holds, said truthfully for a message about a stopped run."""
        if not self.last.exists():
            return "no checkpoint was written yet"
        try:
            step = read_meta(self.last)["training"]["step"]
        except (PoetgenError, KeyError, TypeError):
            return f"{self.last} is left as it was"
        return f"{self.last} (step {step}) is left as it was"


def _advice(run: "_Run", config: TrainConfig) -> str:
    # The peak: given, or fixed from the run's length; in an auto run's warm-up, the latest rate.
    peak = config.lr or run.peak_lr or run.lr
    return f"Lower --lr (this run's peak: {peak:.3g}; halve it, say) or --clip, then --resume"


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


def optimizer_step(model: CharLSTM, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor, state: State, lr: float, clip: float,
                   bf16: bool = False) -> tuple[float, State]:
    """One step of truncated BPTT on the chunk `x` -> `y`, starting from the carried `state`.

    Forward, loss, backward, clip the global gradient norm to `clip`, AdamW update at `lr`.
    Returns the loss (nats per character) and the state to carry into the next chunk. A loss that
    is not finite is returned without updating anything: the caller stops the run.

    `model` may be a DistributedDataParallel around the model: backward then averages the
    gradients over the ranks, and the loss returned (and checked) is the global batch's, the same
    on every rank, so that all of them stop together on a loss that is not finite.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    state = tuple(s.detach() for s in state)  # keep the values, cut the graph
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs, state = model(x, state)
        loss = distributed.unwrap(model).loss(outputs, y)
    global_loss = distributed.mean(loss.detach())
    if not torch.isfinite(global_loss):
        return global_loss.item(), state
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return global_loss.item(), state


def evaluate_and_save(run: _Run, checkpoints: _Checkpoints, val_ids: Ids, burn_ids: torch.Tensor,
                      log_row: Callable[[float], None], snapshot: tuple[State, torch.Tensor]
                      ) -> float:
    """Validation bpc (from a start state burned in anew); then `log_row(val_bpc)` (the metrics
    row goes first: see the module docstring), `best` when it is the lowest so far, and `last`
    with the streams' states and RNG states `snapshot` (distributed.gather_state).

    A validation loss that is not finite, or absurd (over twice the bits of a uniform guess over
    the vocabulary) while the model reads its own training text (`burn_ids`, its tail) no better
    than that guess, saves nothing: the weights diverged in the last update. An absurd
    validation loss beside training text still read well is over-fitting (a model of a few poems
    grows certain of them), which the run goes on through: `best` keeps the best.
    """
    burn_in_start_state(run.model, burn_ids)
    val_bpc = evaluate_ids(run.model, checkpoints.vocab, id_pieces(val_ids)).bpc
    uniform = math.log2(len(checkpoints.vocab))
    if math.isfinite(val_bpc) and val_bpc > 2 * uniform:
        seen_bpc = evaluate_ids(run.model, checkpoints.vocab, [burn_ids]).bpc
        diverged = not seen_bpc < uniform  # NaN too
    else:
        diverged = not math.isfinite(val_bpc)
    if diverged:
        ceiling = 2 * uniform
        what = (f"{val_bpc}" if not math.isfinite(val_bpc) else
                f"{val_bpc:.4g} bits per character (over {ceiling:.1f}, twice a uniform guess's)")
        raise NonFiniteLossError(f"the validation loss became {what} at step {run.step}; "
                                 f"nothing was saved at that step: {checkpoints.kept()}. "
                                 f"{_advice(run, checkpoints.config)}")
    run.eval_pending = False
    log_row(val_bpc)
    if val_bpc < run.best:
        run.best = val_bpc
        checkpoints.save_best(run, val_bpc)
    checkpoints.save_last(run, val_bpc, *snapshot)
    return val_bpc


def save_last(run: _Run, checkpoints: _Checkpoints, world: World, val_bpc: float) -> None:
    """Save `last` where the run stands. Every rank calls it: the streams' states and RNG states
    are gathered to rank 0, which writes; the others wait until the file is in place."""
    snapshot = distributed.gather_state(world, run.state)
    if world.is_main:
        checkpoints.save_last(run, val_bpc, *snapshot)
    distributed.barrier(world)


def epoch_streams(train_ids: Ids, vocab: Vocab, config: TrainConfig, shuffle: bool, epoch: int,
                  world: World) -> Streams:
    """This rank's streams for pass `epoch`: the lines in a new order for each pass when
    `shuffle` (a corpus of one document per line, held in memory), else the corpus as it is.

    Every rank shuffles alike (the seed is the config's), then reads its own share of streams.
    """
    ids = shuffle_lines(train_ids, vocab.newline_id, config.seed + epoch) if shuffle else train_ids
    return Streams(ids, config.batch_size, config.bptt, world.streams(config.batch_size))


def preview(model: CharLSTM, vocab: Vocab, config: TrainConfig, step: int) -> str:
    """A short free sample, shown at each evaluation to see what the model writes by now."""
    with evaluating(model):
        return generate(model, vocab, n=1, max_chars=config.sample_chars, temperature=0.8,
                        seed=config.seed + step, stop_at_newline=False)[0].text


def total_steps(config: TrainConfig, chunks_per_epoch: int) -> int | None:
    """The step count the run stops at (the first that reaches step_limit), or None when only a
    time budget bounds it."""
    limit = step_limit(config, chunks_per_epoch)
    return math.ceil(limit) if math.isfinite(limit) else None


def _start_run(vocab: Vocab, model_config: ModelConfig, config: TrainConfig, last_path: Path,
               fingerprint: str, device: torch.device, resume: bool,
               init: str | Path | None, world: World, val_fingerprint: str = "") -> _Run:
    """A new run (random or `init` weights), or the run saved in `last_path` (resume), with the
    state of this rank's streams."""
    torch.manual_seed(config.seed)
    streams = world.streams(config.batch_size)
    if not resume:
        if last_path.exists() or (last_path.parent / "best.safetensors").exists():
            raise CheckpointError(f"{last_path.parent} already holds a run; pass --resume to "
                                  "continue it, or choose another --out directory")
        init_meta = None
        if init is not None:
            model, init_meta = _initial_model(init, vocab, model_config)
        else:
            newline = -1 if vocab.newline_id is None else vocab.newline_id
            try:
                model = CharLSTM(replace(model_config, vocab_size=len(vocab), newline_id=newline))
            except RuntimeError as e:  # a size within bounds, beyond this machine's memory
                if "alloc" not in str(e):
                    raise
                raise ConfigError(f"a model of hidden_size {model_config.hidden_size} and "
                                  f"embed_size {model_config.embed_size} does not fit in this "
                                  "machine's memory; choose smaller ones") from None
        model = model.to(device)
        if world.size > 1:  # the same weights on every rank, but each its own dropout masks
            torch.manual_seed(config.seed + 1 + world.rank)
        return _Run(model, make_optimizer(model, config), model.zero_state(len(streams)),
                    init=init_meta, world_size=world.size)
    ckpt = load_checkpoint(last_of_run(last_path.parent), device=device, with_extra=True)
    check_resumable(ckpt.meta, last_path)
    training = ckpt.meta["training"]
    if training["corpus"] != fingerprint:
        raise CheckpointError(f"{last_path}: was trained on a different corpus or vocabulary; "
                              "resume with the same CORPUS, or start a new --out directory")
    if training.get("val", val_fingerprint) != val_fingerprint:  # older runs did not record it
        raise CheckpointError(f"{last_path}: was validated on other text, and `best` is the best "
                              "on one text; resume with the same --val (or none, as before), or "
                              "start a new --out directory")
    state = _carried_state(ckpt, config, last_path)
    optimizer = make_optimizer(ckpt.model, config)
    restore_optimizer(optimizer, {k: v.to(device) for k, v in ckpt.extra.items()}, last_path)
    saved_world = training.get("world_size", 1)
    if saved_world == world.size:  # each rank continues its own random numbers
        torch.set_rng_state(_rank_rng(ckpt, saved_world, world.rank, last_path))
    else:  # see resume_note
        torch.manual_seed(config.seed + 1 + world.rank + world.size * training["step"])
    best = training["best_val_bpc"]
    mine = slice(streams.start, streams.stop)  # the state is every stream's, in dim 1
    return _Run(ckpt.model, optimizer, tuple(s[:, mine].to(device) for s in state),
                step=training["step"], elapsed=training["elapsed"],
                best=math.inf if best is None else best, init=ckpt.meta.get("init"),
                eval_pending=training.get("eval_pending") is True, lr=training.get("lr", 0.0),
                chars_per_s=training.get("chars_per_s", 0.0),
                loss_sum=training.get("loss_sum", 0.0), loss_steps=training.get("loss_steps", 0),
                world_size=saved_world, peak_lr=training.get("peak_lr", 0.0))


def _rank_rng(ckpt, saved_world: int, rank: int, source: Path) -> torch.Tensor:
    """This rank's saved RNG state: `rng` for one process, row `rank` of `rng_ranks` for several."""
    if saved_world == 1:
        return ckpt.extra["rng"]
    rngs = ckpt.extra.get("rng_ranks")
    if rngs is None or rngs.dtype != torch.uint8 or tuple(rngs.shape) != (
            saved_world, ckpt.extra["rng"].numel()):
        raise CheckpointError(f"{source}: the saved random states of the {saved_world} processes "
                              "are missing or malformed; start a new run with --init to keep "
                              "the weights")
    return rngs[rank].clone()  # its own storage: set_rng_state reads from the start of it


def resume_note(saved_world: int, world: World, model_config: ModelConfig) -> str | None:
    """What a resume with another number of processes than the run was saved by does (None when
    the number is the same: the run then continues exactly)."""
    if saved_world == world.size:
        return None
    random = model_config.dropout > 0 or model_config.weight_drop > 0
    processes = lambda n: f"{n} process" + ("es" if n != 1 else "")  # noqa: E731
    return (f"resuming a run saved by {processes(saved_world)} with {processes(world.size)}: the "
            "streams are shared out anew, each keeping its LSTM state, and the weights, "
            "optimizer, data position and schedule continue where they were; " +
            ("the dropout masks come from new random seeds, so the run ends as a run with "
             "another seed would, not exactly as it would have" if random else
             "this model draws no random numbers (no dropout), so the run ends as it would "
             "have, up to float rounding"))


def _carried_state(ckpt, config: TrainConfig, source: Path) -> State:
    """The saved RNG and LSTM state, checked: a retyped or reshaped tensor would crash later."""
    rng = ckpt.extra.get("rng")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise CheckpointError(f"{source}: the saved random state is missing or malformed; "
                              "start a new run with --init to keep the weights")
    cfg, (h, c) = ckpt.model.config, (ckpt.extra.get("train_h"), ckpt.extra.get("train_c"))
    attention = tuple(ckpt.extra.get(name) for name in ATTENTION_STATE if name in ckpt.extra)
    saved_batch = ckpt.meta["train_config"].get("batch_size", config.batch_size)
    if saved_batch != config.batch_size:
        raise ConfigError(f"--resume continues the run's {saved_batch} streams; drop --batch-size "
                          "(or start a new run from its weights with --init)")
    want = ((cfg.num_layers, config.batch_size, cfg.proj_size or cfg.hidden_size),
            (cfg.num_layers, config.batch_size, ckpt.model.cell_size))
    for name, t, shape in (("train_h", h, want[0]), ("train_c", c, want[1])):
        if t is None or tuple(t.shape) != shape or not t.is_floating_point():
            raise CheckpointError(f"{source}: the saved LSTM state {name} is missing or not "
                                  f"float {list(shape)}; start a new run with --init to keep the "
                                  "weights")
    if len(attention) != (2 if ckpt.model.attention is not None else 0) or any(
            t.size(1) != config.batch_size for t in attention):
        raise CheckpointError(f"{source}: the saved attention memory is missing or malformed; "
                              "start a new run with --init to keep the weights")
    return (h, c) + attention


def train(train_ids: Ids, val_ids: Ids, vocab: Vocab, model_config: ModelConfig,
          config: TrainConfig, run_dir: str | Path, resume: bool = False,
          callbacks: Callbacks | None = None, init: str | Path | None = None,
          started: float | None = None) -> TrainResult:
    """Train (or resume) a model on `train_ids`, validating on `val_ids`, saving into `run_dir`.

    The ids are tensors, or memory-mapped arrays of a prepared corpus, which are read a chunk at
    a time and in their own order (the per-epoch shuffle would hold a reordered copy in memory).

    `started` is the time.perf_counter() at which the user's command began (reading the corpus,
    say): the time budget counts from there. By default it counts from this call.

    `init` starts from a trained checkpoint's weights instead of random ones (a second stage
    with new settings, or fine-tuning): its shapes and vocabulary must match, and only the
    shape-free REGULARIZATION fields (dropout, weight_drop) are taken from `model_config`. The
    optimizer and schedule start afresh. A corpus with more than `config.init_max_unknown` of
    its characters outside the checkpoint's vocabulary is refused (check_init_coverage).

    In a process group (torchrun), every rank calls this with the same arguments; callbacks
    matter on rank 0 only, which alone writes into `run_dir` (see distributed.py).
    """
    # -- settings, the device, and where the run saves ------------------------------------------
    config.validate()
    if model_config.text_kind == "auto":  # the checkpoint records what was decided
        model_config = replace(model_config, text_kind=detect_text_kind(train_ids, vocab.newline_id))
    world = distributed.current()
    device = distributed.local_device(pick_device(config.device), world)
    if device.type == "cuda":  # TF32 matmuls: float32 range and accumulation, several times faster
        torch.set_float32_matmul_precision("high")
    chunks = len(Streams(train_ids, config.batch_size, config.bptt))  # any order: same count
    train_chars = len(as_array(train_ids))
    checkpoints = _Checkpoints(Path(run_dir), vocab, config, fingerprint(train_ids), train_chars,
                               chunks, fingerprint(val_ids))

    # One trainer per directory (stale temp files go): the rank that writes, rank 0, holds it.
    with RunLock(checkpoints.run_dir) if world.is_main else nullcontext() as lock:
        # -- the model and optimizer: new, from --init, or where `last` left them --------------
        run = _start_run(vocab, model_config, config, checkpoints.last, checkpoints.corpus,
                         device, resume, init, world, checkpoints.val)
        note = resume_note(run.world_size, world, run.model.config) if resume else None
        run.world_size = world.size
        unknown = (check_init_coverage(train_ids, vocab, config, init) if init and not resume
                   else None)

        # -- the loop, announced once Ctrl-C is caught: from then on an interrupt saves `last` --
        loop = _Loop(run, checkpoints, train_ids, val_ids, world, device, callbacks or Callbacks(),
                     started, keep_metrics=resume)
        with _StopFlag(final_second=not distributed.launched()) as stop:
            loop.callbacks.on_start({
                "device": str(device), "parameters": run.model.num_parameters(),
                "vocab": len(vocab), "train_chars": train_chars,
                "val_chars": len(as_array(val_ids)), "chunks_per_epoch": chunks,
                "total_steps": loop.steps, "start_step": run.step,
                "text_kind": run.model.config.text_kind, "time_budget": config.time_budget,
                "removed": lock.removed if lock else [], "world_size": world.size,
                "resume_note": note, "init_unknown_share": unknown})
            last_val = loop.until_done(stop)
    distributed.barrier(world)  # the others wait for rank 0's last checkpoint
    return TrainResult(run.step, run.best, last_val, checkpoints.run_dir,
                       run.model.num_parameters(), loop.meter.chars_per_s, run.elapsed)


class _Loop:
    """The training loop of one run: SGD steps until a limit, an evaluation when one is due.

    It holds what stays fixed while the run goes (the data, the ranks, the device, where it
    saves) beside `run`, which changes at every step and is what `last` saves.

    Time: `run.elapsed` is the run's wall-clock time as a user's clock counts it, evaluations and
    saving included, and rank 0's clock is everyone's. A run stops early enough for its last
    evaluation to fit in the budget too, judged by what the previous step and evaluation took:
    after a step, when another step and an evaluation would end past the budget (this step's
    evaluation is then the last); after an evaluation, when another step and one more would.
    """

    def __init__(self, run: _Run, checkpoints: _Checkpoints, train_ids: Ids, val_ids: Ids,
                 world: World, device: torch.device, callbacks: Callbacks,
                 started: float | None, keep_metrics: bool):
        self.run, self.checkpoints, self.world, self.device = run, checkpoints, world, device
        self.train_ids, self.val_ids, self.callbacks = train_ids, val_ids, callbacks
        self.config, self.vocab = checkpoints.config, checkpoints.vocab
        self.chunks = checkpoints.chunks_per_epoch
        self.steps = total_steps(self.config, self.chunks)
        self.bf16 = device.type == "cuda" and self.config.precision == "bf16"
        # The start state is burned in on the corpus's last 2,048 characters before each
        # evaluation (see model.burn_in_start_state).
        self.burn_ids = tail_after_newline(train_ids, self.vocab, 2048)
        # Poems (lines) are read in a new order each pass, unless the ids are a memory map.
        self.shuffle = (self.config.shuffle and run.model.config.text_kind == "lines"
                        and isinstance(train_ids, torch.Tensor))
        self.streams: Streams | None = None
        self.streams_epoch = -1  # the pass whose order `streams` holds
        run.model.train()
        # Evaluations in float32 on every CPU, so that metrics.csv and the choice of `best` do
        # not depend on whether this CPU has bfloat16 products (lm/inference.py).
        run.model.inference_precision = "fp32"
        self.net = distributed.data_parallel(run.model, world)  # the model, or DDP around it
        self.meter = Throughput()
        self.metrics_path = checkpoints.run_dir / "metrics.csv"
        if world.is_main:
            _prepare_metrics(self.metrics_path, keep_until=run.step if keep_metrics else -1)
        self.origin = (time.perf_counter() if started is None else started) - run.elapsed
        # What the latest evaluation and step took, by rank 0's clock: the last must fit too.
        self.eval_seconds = self.step_seconds = 0.0
        # (step, elapsed) after this process's first step, which the pace is measured from
        # (planned_steps); rank 0's clock, as every rank agrees it, so all choose one peak.
        self.pace_from: tuple[int, float] | None = None

    def until_done(self, stop: _StopFlag) -> float:
        """Train until a limit (steps, epochs, time) or a stop signal; the last val bpc."""
        run, last_val = self.run, math.nan
        if run.eval_pending:  # an evaluation an interruption skipped (at the last step, say)
            last_val = self.evaluate()
        while (progress := self.progress(run.elapsed)) < 1.0:
            before = run.elapsed
            finished = self.train_step(progress)
            # Rank 0's clock and decisions, and a stop requested on any rank, for all.
            (run.elapsed, finished, run.eval_pending), stopping = distributed.agree(
                self.world, (run.elapsed, finished, run.eval_pending), stop.signal is not None,
                self.device)
            # The first step of this process also carries its start (reading, building, a first
            # step's allocations, a resume's loading): no step's time.
            self.step_seconds = run.elapsed - before if self.pace_from is not None else 0.0
            if self.pace_from is None:
                self.pace_from = (run.step, run.elapsed)

            # -- Ctrl-C or SIGTERM (on any rank): save where we are, stop ----------------------
            if stopping:  # --resume evaluates first if this step was due one
                save_last(run, self.checkpoints, self.world, last_val)
                raise TrainingInterrupted(self.checkpoints.last, run.step)

            # -- when due and at the end: validate, log, checkpoint, preview -------------------
            if run.eval_pending:
                before = run.elapsed
                last_val = self.evaluate()
                self.eval_seconds = run.elapsed - before
                if finished or self.out_of_time(self.step_seconds + self.eval_seconds):
                    break  # this evaluation was the last: another step and one more would not fit
        return last_val

    def progress(self, elapsed: float) -> float:
        return run_progress(self.config, self.run.step, elapsed, self.chunks)

    def out_of_time(self, more: float) -> bool:
        """Whether `more` seconds from now would end past the time budget (if there is one)."""
        return bool(self.config.time_budget) and self.run.elapsed + more > self.config.time_budget

    def train_step(self, progress: float) -> bool:
        """One SGD step on the next chunk of every stream (of this rank's), its bookkeeping, and
        whether the run is finished after it. Marks `run.eval_pending` when an evaluation is due
        (evaluation_due, or the end): recorded, so that a resume after an interrupt right after
        this step still evaluates it."""
        run = self.run
        elapsed_before = run.elapsed
        x, y = (t.to(self.device) for t in self.next_chunk())
        # The peak (lr = 0): followed through the warm-up (whose rates are small), then fixed
        # once the plan is known and kept by --resume, so that the decay has one height whatever
        # the pace does later.
        planned = planned_steps(self.config, run.step, run.elapsed, self.chunks, self.pace_from)
        peak = peak_lr(self.config, planned, run.peak_lr, run.model.config.cell)
        if (not self.config.lr and run.step + 1 >= self.config.warmup_steps
                and math.isfinite(planned)):
            run.peak_lr = peak
        run.lr = learning_rate(self.config, run.step, progress, peak)
        loss, run.state = optimizer_step(self.net, run.optimizer, x, y, run.state, run.lr,
                                         self.config.clip, self.bf16)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the training loss became {loss} at step {run.step + 1}; "
                                     f"nothing was saved after it: {self.checkpoints.kept()}. "
                                     f"{_advice(run, self.config)}")
        run.step += 1
        run.elapsed = time.perf_counter() - self.origin
        run.loss_sum, run.loss_steps = run.loss_sum + loss, run.loss_steps + 1
        self.meter.count(x.numel() * self.world.size)  # every rank reads as much: chars/s of all
        run.chars_per_s = self.meter.chars_per_s
        self.callbacks.on_step(StepInfo(run.step, self.steps, loss, run.lr,
                                        self.meter.chars_per_s, run.elapsed))
        # Another step (as long as the last one) and the last evaluation must fit.
        finished = (self.progress(run.elapsed) >= 1.0
                    or self.out_of_time(self.step_seconds + self.eval_seconds))
        run.eval_pending = finished or evaluation_due(self.config, run.step, elapsed_before,
                                                      run.elapsed, self.steps)
        return finished

    def next_chunk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and targets (bptt, streams) of the step about to run; a new pass reorders
        the poems (when shuffling) and starts the carried state afresh."""
        epoch, index = divmod(self.run.step, self.chunks)
        if self.streams is None or epoch != self.streams_epoch:
            self.streams = epoch_streams(self.train_ids, self.vocab, self.config, self.shuffle,
                                         epoch, self.world)
            self.streams_epoch = epoch
        streams = self.streams
        if index == 0:
            self.run.state = self.run.model.zero_state(len(streams.streams))
        return streams.chunk(index)

    def evaluate(self) -> float:
        """Validate, log the metrics row, checkpoint, preview: the end of an evaluation step.
        Every rank calls it; rank 0 does the work, and its clock is everyone's after."""
        run, world = self.run, self.world
        snapshot = distributed.gather_state(world, run.state)
        val_bpc = math.nan
        if world.is_main:
            with self.meter.paused():
                train_loss = run.loss_sum / max(1, run.loss_steps)
                val_bpc = evaluate_and_save(run, self.checkpoints, self.val_ids, self.burn_ids,
                                            lambda val: self.log_row(train_loss, val), snapshot)
                sample = preview(run.model, self.vocab, self.config, run.step)
                self.callbacks.on_eval(EvalInfo(run.step, val_bpc, run.best, train_loss / LN2,
                                                sample))
            run.elapsed = time.perf_counter() - self.origin
        run.eval_pending = False
        run.elapsed = distributed.from_main(world, run.elapsed, self.device)
        return val_bpc

    def log_row(self, train_loss: float, val_bpc: float) -> None:
        """The evaluation's metrics.csv row; the training losses it averaged start again."""
        run = self.run
        _append_metrics(self.metrics_path, [run.step, train_loss, train_loss / LN2, val_bpc,
                                            run.lr, run.chars_per_s, run.elapsed])
        run.loss_sum, run.loss_steps = 0.0, 0


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
    return model, {"from": str(source.path), "sha256": source.sha256,
                   "step": source.meta.get("training", {}).get("step")}


def _prepare_metrics(path: Path, keep_until: int) -> None:
    """Start metrics.csv, or on resume drop rows logged after the checkpoint we resume from."""
    rows = []
    if keep_until >= 0 and path.exists():
        try:
            with path.open(newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if _row_step(r) <= keep_until]
        except OSError as e:
            raise file_error(path, e, "read") from None
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _row_step(row: dict) -> float:
    """A row's step; a row that a kill cut short has none and is dropped."""
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return math.inf


def _append_metrics(path: Path, row: list) -> None:
    try:
        with path.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    except OSError as e:
        raise file_error(path, e, "write") from None

"""Configuration: what a model is (ModelConfig) and how it is trained (TrainConfig).

The defaults are the configuration that reached the lowest validation bits-per-character in a
10-minute run on a 2-core CPU (tang_train.txt -> tang_val.txt); see README "Choosing the defaults".
A TOML file (`poetgen train --config FILE.toml`) may set any field by name; flags override it.

Each field is declared once, with its default and what it means. A field made with `option(...)`
is also a `poetgen train` flag, --NAME (underscores as dashes), whose help is that text and whose
choices, where it has them, are what validate() accepts; the CLI builds its options from here
(train_options) and names these flags in its messages.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from poetgen.errors import ConfigError


# Upper bounds on the model's sizes. Far beyond anything that trains on one machine, they keep a
# mistyped flag or a lying checkpoint header from asking for tensors whose size overflows.
MAX_SIZE = 1 << 24
MAX_LR = 10.0  # at 1e300 AdamW's arithmetic overflowed with a traceback
SEED_LIMIT = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer (training, sampling)
MAX_LAYERS = 256

TEXT_KINDS = ("auto", "lines", "running")
CELLS = ("lstm", "gru")
SOFTMAXES = ("adaptive", "full")
TRAIN_PRECISIONS = ("fp32", "bf16")


def option(default, help: str, choices: tuple[str, ...] = (), own: bool = False):  # noqa: A002
    """A field that is also a `poetgen train` flag: its default, its help (what the field
    means), its choices. `own`: the CLI declares the flag itself (a duration, a device with
    completion, an on/off pair), from this help all the same."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "choices": choices, "own": own})


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def train_flags() -> dict[str, dataclasses.Field]:
    """Every field of ModelConfig and TrainConfig that `poetgen train` takes as a flag, by name."""
    return {f.name: f for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)
            if "help" in f.metadata}


@dataclass
class ModelConfig:
    vocab_size: int = 0  # set from the corpus vocabulary, never by hand
    embed_size: int = option(128, "Character embedding width.")
    cell: str = option("lstm", "Recurrent cell: LSTM, or GRU (one update gate instead of input "
                               "and forget gates, no cell state).", CELLS)
    hidden_size: int = option(256, "LSTM cell size (GRU state size).")
    num_layers: int = option(1, "Stacked LSTM layers.")
    proj_size: int = option(0, "LSTM output projection size (LSTMP; 0 = none).")
    dropout: float = option(0.1, "Dropout on embeddings, between layers and before the softmax.")
    weight_drop: float = option(0.0, "DropConnect on the recurrent weights (AWD-LSTM; 0 = off).")
    softmax: str = option("adaptive", "Output layer: adaptive (fast for thousands of characters) "
                                      "or full.", SOFTMAXES)
    cutoffs: tuple[int, ...] = (1000, 3000)  # adaptive softmax cluster boundaries (by frequency rank)
    tie_weights: bool = option(False, "Share the input embedding and the output matrix (needs "
                                      "--softmax full).", own=True)
    attention: int = option(0, "Attention over the poem so far: key width of one head, e.g. 64 "
                               "(0 = off; model.py).")
    newline_id: int = -1  # the newline's id, where a poem ends for the attention (from the vocabulary)
    # What kind of text the model learned, which decides how it is evaluated (and sampled):
    # "lines" = one document per line (poems: each line is scored alone from the poem-start
    # state), "running" = running text (prose, plays: one stream, state carried across lines).
    # "auto" is decided from the training corpus when training starts (corpus.detect_text_kind)
    # and the checkpoint stores the result; checkpoints from before this field read as "lines".
    text_kind: str = option("auto", "What the corpus is: one document per line (poems), or "
                                    "running text (prose); decides how the model is evaluated. "
                                    "auto: running if it has blank lines.", TEXT_KINDS)

    def validate(self) -> None:
        _check(0 < self.vocab_size <= MAX_SIZE or self.vocab_size == 0,
               f"vocab_size must be between 1 and {MAX_SIZE:,}")
        _check(0 < self.embed_size <= MAX_SIZE, f"embed_size must be between 1 and {MAX_SIZE:,}")
        _check(0 < self.hidden_size <= MAX_SIZE, f"hidden_size must be between 1 and {MAX_SIZE:,}")
        _check(1 <= self.num_layers <= MAX_LAYERS, f"num_layers must be between 1 and {MAX_LAYERS}")
        _check(0 <= self.proj_size < self.hidden_size or self.proj_size == 0,
               "proj_size must be 0 or smaller than hidden_size")
        _check(self.cell in CELLS, "cell must be 'lstm' or 'gru'")
        _check(not (self.cell == "gru" and self.proj_size), "proj_size needs cell = 'lstm'")
        _check(0 <= self.attention <= MAX_SIZE,
               "attention must be 0 (off) or a positive key width, e.g. 64")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(0.0 <= self.weight_drop < 1.0, "weight_drop must be in [0, 1)")
        _check(self.softmax in SOFTMAXES, "softmax must be 'adaptive' or 'full'")
        _check(not (self.tie_weights and self.softmax == "adaptive"),
               "tie_weights needs softmax = 'full'")
        _check(self.text_kind in TEXT_KINDS, f"text_kind must be one of {', '.join(TEXT_KINDS)}")
        _check(list(self.cutoffs) == sorted(set(self.cutoffs))
               and all(0 < c <= MAX_SIZE for c in self.cutoffs),
               "cutoffs must be increasing positive integers, e.g. 1000,3000")


# Fields that regularize training without changing the weights' shapes: a run started from a
# trained model (train --init) may set them anew.
REGULARIZATION = ("dropout", "weight_drop")


# With `lr = 0` (the default) the peak learning rate follows the number of optimizer steps the
# run will make (train.planned_steps): a high rate makes fast progress in a short run, a lower
# one ends lower in a long run. Val bpc side by side, tang_train, the default model, one core
# each, 0.02 against 0.01 (docs/runs/lr/): 800 steps 6.876 / 7.033, 1,500 6.672 / 6.698, 2,200
# 6.601 / 6.570, ~3,000 (5 idle minutes) 6.564 / 6.487, ~6,400 (10) 6.500 / 6.418 (0.005:
# 6.422); ~600 (10 minutes on a loaded core) 7.015 / 7.245. At 25,000 (~45 minutes) 0.005 did
# not pay: 6.4147 against 0.01's 6.4072.
AUTO_LR_HIGH, AUTO_LR_LOW = 0.02, 0.01
AUTO_LR_STEPS = (1500, 3000)  # the high rate up to the first, the low from the second
# The GRU's best rates are half the LSTM's at every length measured (docs/runs/cells-s10, step
# limits, one core each): 800 steps 0.01 6.809 / 0.02 6.933 / 0.005 7.017 (the LSTM's best there
# is 0.02's 6.876); 1,500 0.01 6.593 / 0.005 6.705; 10 idle minutes (~6,000 steps) 0.005 6.319 /
# 0.01 6.411 (session 8).
AUTO_LR_SCALE = {"lstm": 1.0, "gru": 0.5}


def auto_lr(planned_steps: float, cell: str = "lstm") -> float:
    """The peak learning rate for a run of `planned_steps` optimizer steps of a `cell` model:
    AUTO_LR_HIGH up to AUTO_LR_STEPS[0], AUTO_LR_LOW from AUTO_LR_STEPS[1], log-linear in
    between, times AUTO_LR_SCALE[cell]."""
    short, long = AUTO_LR_STEPS
    share = math.log(max(planned_steps, short) / short) / math.log(long / short)
    return AUTO_LR_SCALE[cell] * AUTO_LR_HIGH * (AUTO_LR_LOW / AUTO_LR_HIGH) ** min(1.0, share)


@dataclass
class TrainConfig:
    batch_size: int = option(32, "Parallel streams the corpus is cut into, one chunk of each "
                                 "per step.")
    bptt: int = option(64, "Characters per truncated-BPTT chunk.")
    lr: float = option(0.0, "Peak learning rate (AdamW, warm-up then cosine decay); 0: from "
                            f"the run's planned steps, {AUTO_LR_HIGH} up to {AUTO_LR_STEPS[0]:,}, "
                            f"{AUTO_LR_LOW} from {AUTO_LR_STEPS[1]:,} (a short run gains from a "
                            "high rate, a long one ends lower with a low one); half those for "
                            "--cell gru.")
    weight_decay: float = option(0.01, "AdamW decoupled weight decay (not on biases and norms).")
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    min_lr_ratio: float = 0.05  # the decay ends at lr * min_lr_ratio
    clip: float = option(1.0, "Max global gradient norm.")
    epochs: float = option(0.0, "Stop after this many passes over the corpus (0 = no limit).")
    max_steps: int = option(0, "Stop after this many optimizer steps (0 = no limit).")
    time_budget: float = option(600.0, "Stop after this much wall time, evaluations included, "
                                       "e.g. 90s, 10m, 1h (0 = no limit).", own=True)
    shuffle: bool = option(True, "Reorder the poems (lines) at every epoch; running text is "
                                 "never reordered.")
    eval_every: int = option(250, "Steps between validation + checkpoint.")
    # At least this often: a short run draws a curve (a 2-minute run at 250 steps was evaluated
    # once, at its end).
    min_evals: int = option(10, "Validate at least this many times in a run (every 1/N of its "
                                "step or time limit too).")
    sample_chars: int = 80  # length of the sample shown at each evaluation
    min_count: int = option(1, "Characters seen fewer times map to the unknown token.")
    max_vocab: int = option(0, "Keep at most this many characters, the most frequent (0 = all).")
    init_max_unknown: float = option(0.01, "With --init: refuse a corpus with a larger share of "
                                           "characters outside the checkpoint's vocabulary (1 = "
                                           "never refuse).")
    # Lines chosen by a hash for a one-document-per-line corpus, the last part of the text for
    # running text (as char-rnn and nanoGPT split tinyshakespeare), so that neighbouring lines
    # do not leak into val.
    val_fraction: float = option(0.05, "Share held out when --val is not given: lines chosen by "
                                       "hash, or the end of running text.")
    device: str = option("auto", "Where to train: auto (cuda, else mps, else cpu), cpu, cuda, "
                                 "cuda:N or mps.", own=True)
    # bf16: faster wide matmuls, a coarser recurrence.
    precision: str = option("fp32", "bf16: mixed precision (autocast), on CUDA only (fp32 "
                                    "elsewhere).", TRAIN_PRECISIONS)
    seed: int = option(1234, "Random seed (weights, dropout, the samples shown).")

    def validate(self) -> None:
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.bptt >= 1, "bptt must be at least 1")
        _check(self.lr >= 0, "lr must be positive, or 0 to choose it from the run's length")
        _check(self.lr <= MAX_LR, f"lr must be at most {MAX_LR:g} (AdamW's steps are about lr "
                                  "in size; the defaults are near 0.01)")
        _check(self.weight_decay >= 0, "weight_decay must be 0 or more")
        _check(0 <= self.seed <= SEED_LIMIT, f"seed must be between 0 and {SEED_LIMIT}")
        _check(self.min_count >= 1, "min_count must be at least 1")
        _check(self.max_vocab >= 0, "max_vocab must be 0 (all characters) or more")
        _check(self.sample_chars >= 1, "sample_chars must be at least 1")
        _check(self.clip > 0, "clip must be positive")
        _check(self.warmup_steps >= 0, "warmup_steps must be 0 or more")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        _check(min(self.epochs, self.max_steps, self.time_budget) >= 0,
               "epochs, max_steps and time_budget must be 0 (no limit) or more")
        _check(self.epochs > 0 or self.max_steps > 0 or self.time_budget > 0,
               "set at least one of epochs, max_steps or time_budget, or training never ends")
        _check(self.eval_every >= 1, "eval_every must be at least 1")
        _check(self.min_evals >= 1, "min_evals must be at least 1")
        _check(0 < self.val_fraction < 1, "val_fraction must be between 0 and 1")
        _check(0 <= self.init_max_unknown <= 1, "init_max_unknown must be between 0 and 1")
        _check(is_device_name(self.device), f"device must be {DEVICE_NAMES}, not {self.device!r}")
        _check(self.precision in TRAIN_PRECISIONS, "precision must be fp32 or bf16")


def check_types(cls, values: dict, where: str) -> dict:
    """`values` with each field of dataclass `cls` checked against the type of its default.

    Settings come from TOML files and checkpoint headers, where "32", 32.5 or true may stand
    where 32 belongs; each is refused here, in one line, before any of them is used. Integers are
    accepted for float fields; lists become tuples. Names that are not fields pass through.
    """
    defaults = cls()
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, default = values[f.name], getattr(defaults, f.name)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = _is_int(value), "an integer"
        elif isinstance(default, float):
            ok, kind = _is_number(value), "a finite number"
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:  # a tuple of integers (cutoffs)
            ok, kind = isinstance(value, (list, tuple)) and all(map(_is_int, value)), "a list of integers"
            value = tuple(value) if ok else value
        if not ok:
            raise ConfigError(f"{where}: {f.name} must be {kind}, not {repr(value)[:40]}")
        out[f.name] = value
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 1 << 53


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


DEVICE_NAMES = "auto, cpu, cuda, cuda:N (the N-th GPU) or mps"
# The weights inference multiplies with on a CPU (inference.py; `auto` is inference.product_kind),
# and what a user is told of them (`--precision`, poetgen.load), in one place.
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "int8", "w8a8")
INFERENCE_PRECISION_HELP = (
    "The weights the model multiplies with on a CPU (not a GPU): fp32; bf16 or int8 copies, or "
    "w8a8 (the LSTM's gates in int8 weights and activations; x86): faster, the bundled model's "
    "val bpc moves by less than 0.001; or auto: int8 for up to 4 rows at a time (poems or "
    "candidates) on x86 CPUs with AVX2 or AVX-512; for more, bf16 where the CPU has native "
    "bfloat16 (AMX, AVX512-BF16), else w8a8 on x86, else fp32. A seed writes the same poem "
    "again at the same precision on the same kind of CPU; fp32 is the one to compare across "
    "CPUs.")


def is_device_name(name: str) -> bool:
    """A device poetgen can be asked for (whether this machine has it is pick_device's question)."""
    return name in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", name) is not None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_duration(text: str | float | int) -> float:
    """'90' or '90s' -> 90.0, '10m' -> 600.0, '1h30m' -> 5400.0 seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 90s, 10m or 1h30m")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * scale[u] for n, u in parts)


def load_toml(path: str | Path) -> dict:
    """Read a config file into {field: value}, checking every key is a known field."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    flat: dict = {}
    for key, value in data.items():  # allow [model] / [train] tables or a flat file
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    known = {f.name for f in dataclasses.fields(ModelConfig)} | {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(flat) - known - {"vocab_size"})
    if unknown:
        raise ConfigError(f"config file {p}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    if isinstance(flat.get("time_budget"), str):
        flat["time_budget"] = parse_duration(flat["time_budget"])
    flat = check_types(ModelConfig, flat, f"config file {p}")
    return check_types(TrainConfig, flat, f"config file {p}")


def split_fields(values: dict) -> tuple[dict, dict]:
    """Split a flat {field: value} dict into ModelConfig and TrainConfig keyword arguments."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    return ({k: v for k, v in values.items() if k in model_names},
            {k: v for k, v in values.items() if k in train_names})


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value  # TOML lists, tuples


def run_configs(values: dict, meta: dict | None = None,
                keep: str = "all") -> tuple[ModelConfig, TrainConfig]:
    """The configs of a training run from flat settings (a TOML file merged with flags).

    Without `meta` it is a new run. With the metadata of a checkpoint, `keep="all"` resumes it:
    the model stays as it was and the saved training settings are the base that `values` may
    override. `keep="shape"` starts from its weights (train --init): the model keeps its shape
    but may take new REGULARIZATION settings, and training settings start from the defaults.
    """
    model_values, train_values = split_fields(values)
    if meta is None:
        model, train = ModelConfig(**model_values), TrainConfig(**train_values)
    elif keep == "all":
        model = model_config_from_dict(meta["config"])
        # The same command again (its flags or config file give the model's own values) is fine.
        changed = sorted(k for k, v in model_values.items()
                         if _comparable(v) != _comparable(getattr(model, k)))
        if changed:
            raise ConfigError(f"--resume keeps the model as it was; drop {', '.join(changed)} "
                              "or start a new --out directory")
        train = TrainConfig(**{**meta["train_config"], **train_values})
    else:
        regularization = {k: model_values.pop(k) for k in REGULARIZATION if k in model_values}
        if model_values:
            raise ConfigError(f"--init keeps the model's shape; drop "
                              f"{', '.join(sorted(model_values))} (only --dropout and "
                              f"--weight-drop may change)")
        model = dataclasses.replace(model_config_from_dict(meta["config"]), **regularization)
        train = TrainConfig(**train_values)
    model.validate()
    train.validate()
    return model, train


def to_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    if "cutoffs" in d:
        d["cutoffs"] = list(d["cutoffs"])
    return d


def model_config_from_dict(d: dict) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs.setdefault("text_kind", "lines")  # older checkpoints: all learned one poem per line
    if "cutoffs" in kwargs:
        kwargs["cutoffs"] = tuple(kwargs["cutoffs"])
    return ModelConfig(**kwargs)


__all__ = ["ModelConfig", "TrainConfig", "REGULARIZATION", "MAX_SIZE", "MAX_LAYERS", "check_types",
           "parse_duration", "load_toml",
           "split_fields", "to_dict", "model_config_from_dict", "run_configs"]

"""From what a user asked for to what a training run does: the settings of `poetgen train`.

A run's settings come from these places, later ones winning:

    TrainConfig/ModelConfig defaults (a new run) or the saved run's settings (--resume)
        <  a --config TOML file  <  flags

except for what must not change, where a flag asking otherwise is refused: the model of a run
that --resume continues, the shape of an --init checkpoint (only REGULARIZATION may change), and
the vocabulary settings a prepared corpus was encoded with. This module settles all of that
before any data is read, so that a mistake is a one-line ConfigError, not a failed run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from poetgen.errors import ConfigError
from poetgen.lm.config import (ModelConfig, TrainConfig, flag_of, load_toml, parse_duration,
                               run_configs)

# Settings a prepared corpus fixes when it is encoded (its vocabulary and validation share).
ENCODE_SETTINGS = ("min_count", "max_vocab", "val_fraction")
LIMITS = ("epochs", "max_steps", "time_budget")  # any of them given replaces the default budget


@dataclass(frozen=True)
class TrainingPlan:
    """What `poetgen train` will do: its configs, where it saves, what it starts from."""

    model_config: ModelConfig
    config: TrainConfig
    out_dir: Path
    init: Path | None  # the checkpoint --init starts from, resolved
    base_meta: dict | None  # the metadata of the checkpoint resumed or started from


def plan_training(corpus: Path, flags: dict, *, config_file: Path | None = None,
                  time_budget: str | None = None, out_dir: Path | None = None,
                  resume: bool = False, init: str | None = None,
                  notify: Callable[[str], None] = lambda note: None) -> TrainingPlan:
    """The configs of `poetgen train CORPUS`: `flags` are the {field: value} given on the command
    line (None for not given), `time_budget` as the user wrote it (e.g. "10m"). `notify` hears
    what the user should know about the checkpoint resumed or started from (an old format, say)
    as soon as its header is read, before anything else can refuse the run."""
    from poetgen.lm import checkpoint as ckpt_mod

    values = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if time_budget is not None:
        values["time_budget"] = parse_duration(time_budget)
    if any(k in values for k in LIMITS):  # explicit limits replace the default 10-minute budget
        for k in LIMITS:
            values.setdefault(k, 0)
    values.update(prepared_settings(corpus, values))
    if resume and init:
        raise ConfigError("--resume continues a run that already has its weights; drop --init")
    out_dir = out_dir or Path("checkpoints") / corpus.stem
    init_path = ckpt_mod.resolve(init) if init else None
    source = ckpt_mod.last_of_run(out_dir) if resume else init_path
    header = ckpt_mod.read_header(source) if source else None
    for note in header.notes if header else ():
        notify(note)
    if resume:
        ckpt_mod.check_resumable(header.meta, header.path)
    meta = header.meta if header else None
    model_config, config = run_configs(values, meta, keep="all" if resume else "shape")
    return TrainingPlan(model_config, config, out_dir, init_path, meta)


def prepared_settings(corpus: Path, values: dict) -> dict:
    """The ENCODE_SETTINGS a prepared corpus was encoded with (none for a text file); a flag
    that asks for another value is refused."""
    from poetgen.lm.prepared import is_prepared, open_prepared

    if not is_prepared(corpus):
        return {}
    encoded = open_prepared(corpus).meta
    fixed = {name: encoded[name] for name in ENCODE_SETTINGS if encoded[name] is not None}
    for name, value in fixed.items():
        if name in values and values[name] != value:
            flag = flag_of(name)
            raise ConfigError(f"{corpus} was encoded with {flag} {value}; drop {flag}, or "
                              "encode it again with it")
    return fixed

"""The `poetgen` command line: parse options, call the core, print results.

Errors a user can fix (PoetgenError) and file-system faults (OSError) become one-line messages
with exit code 1; `--debug` shows the traceback instead. Ctrl-C exits with 130 and no traceback,
whenever it comes; during training it first saves `last`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shlex
import signal
import sys
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from poetgen import __version__
from poetgen.lm.config import (INFERENCE_PRECISION_HELP, INFERENCE_PRECISIONS, TrainConfig,
                               flag_of, load_toml, to_dict, train_flags)
from poetgen.lm.launch import ENCODE_SETTINGS
from poetgen.errors import ConfigError, PoetgenError, file_error
from poetgen.settings import GenerationSettings
from poetgen.verse.prosody import READINGS, RHYME_SCHEMES, TONE_MODES

# Piped or redirected, stdout has no width of its own; rich would take 80 columns and cut the
# cells of wide tables (eval --generate's) to "100.…". A file or a pipe gets whole rows.
PIPED_WIDTH = 200
# emoji=False: rich would turn a user's ':cat:' (`:ban :cat:` in the REPL) into 🐱.
out = Console(highlight=False, soft_wrap=True, emoji=False,
              width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class PoetgenGroup(click.Group):
    """Turns PoetgenError and OSError into ClickException (one line, exit 1) unless --debug is
    on, and Ctrl-C into exit 130 (click's own "Aborted!" exits 1, as if it had failed)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Whoever read stdout stopped (`poetgen check poems.txt --json | head -1`): end
            # quietly, with the status of a tool that SIGPIPE ended (1 where there is no SIGPIPE,
            # on Windows); what is left to write goes nowhere. stdout and stderr are the only
            # pipes poetgen writes to.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # stdout is no file (an embedding, pythonw)
                pass
            sigpipe = getattr(signal, "SIGPIPE", None)
            raise click.exceptions.Exit(128 + sigpipe if sigpipe else 1) from None
        except (PoetgenError, OSError) as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if isinstance(e, OSError):  # a fault no specific check turned into a PoetgenError
                e = file_error(e.filename or "a file", e, "use")
            rank = os.environ.get("RANK", "0")  # set by torchrun: say which process failed
            raise click.ClickException(str(e) if rank == "0" else f"[rank {rank}] {e}") from None
        except KeyboardInterrupt:
            err.print("Interrupted.")
            raise click.exceptions.Exit(130) from None


def import_torch_holding_ctrl_c() -> None:
    """Import torch with a Ctrl-C held back until the import is done, then acted on.

    A Ctrl-C that lands inside numpy's or torch's C initialisation leaves them half-imported:
    the next import fails with an ImportError traceback instead of exiting. Holding it costs at
    most the import's second or two.
    """
    hold = ("torch" not in sys.modules and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
    pressed: list[int] = []
    if hold:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        importlib.import_module("torch")
    finally:
        if hold:
            signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


@click.group(cls=PoetgenGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="poetgen")
@click.pass_context
def cli(ctx, debug):
    """Character-level LSTM poetry generator: train on a corpus, then sample poems.

    \b
    Quick start:
      poetgen train corpus.txt --time-budget 10m   # writes checkpoints/corpus/
      poetgen sample --temp 0.8 --n 3              # newest checkpoint under checkpoints/
      poetgen eval checkpoints/corpus val.txt      # bits per character on a file
      poetgen info checkpoints/corpus              # what a checkpoint holds
      poetgen sample --form 七绝 --acrostic 春江花月   # a poem with guaranteed form and rhyme
      poetgen repl                                 # write poems together with the model

    A corpus is UTF-8 text: one poem per line, or running text such as a play or a novel (the
    kind is detected and stored in the checkpoint). `poetgen checkpoints` lists the models poetgen
    sees. Run `poetgen COMMAND --help` for the options of each command.
    """
    ctx.ensure_object(dict)["debug"] = debug
    if ctx.invoked_subcommand not in (None, "check"):  # `check` starts without torch
        import_torch_holding_ctrl_c()
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        click.echo("\nTo write poems together with the model, run: poetgen repl")


# ----------------------------------------------------------------------------------------------
# train

def _own_help(name: str) -> str:
    """The help of a train flag the CLI declares itself (config.option(..., own=True))."""
    return train_flags()[name].metadata["help"]


def _as_flags(message: str, from_file: set[str] = frozenset()) -> str:
    """A settings message as the user spells the settings: as flags (`lr` -> `--lr`,
    `time_budget` -> `--time-budget`), but for those a --config file set (`from_file`, not
    given again as flags), which keep the file's field names. A name inside a path or a flag
    is left alone."""
    names = [name for name in train_flags() if name not in from_file]
    if not names:
        return message
    pattern = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.sub(rf"(?<![-\w/.])({pattern})(?![-\w/.])", lambda m: flag_of(m.group(1)), message)


_FLAG_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _train_options(f=None, only: tuple[str, ...] | None = None):
    """The train flags of config.train_flags() (or of the fields `only`) the CLI does not declare
    itself, each defaulting to None (not given): a field's type, choices and help, from the
    config's one declaration."""
    def decorate(f):
        for name, field in reversed(train_flags().items()):
            if field.metadata["own"] or (only is not None and name not in only):
                continue
            choices = field.metadata["choices"]
            kind = click.Choice(choices) if choices else _FLAG_TYPES[field.type]
            f = click.option(flag_of(name), name, type=kind, default=None,
                             help=f"{field.metadata['help']} [default: {field.default}]")(f)
        return f
    return decorate(f) if f is not None else decorate


@cli.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--val", "val_path", type=click.Path(path_type=Path),
              help="Validation text. Default: a fixed share of CORPUS's lines (--val-fraction), "
                   "or a prepared CORPUS's own validation ids.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Run directory for best/last checkpoints and metrics.csv. [default: checkpoints/CORPUS-NAME]")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file of settings (field names as in `poetgen info`); flags override it.")
@click.option("--time-budget", default=None,
              help=_own_help("time_budget") + " [default: 10m if no --epochs/--max-steps is "
                                              "given]")
@click.option("--device", default=None, metavar="DEVICE", shell_complete=lambda *a: _DEVICES,
              help=_own_help("device") + " [default: auto]")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads torch may use. [default: one per core]")
@click.option("--tie-weights/--no-tie-weights", default=None, help=_own_help("tie_weights"))
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init", "init_from", default=None, metavar="CHECKPOINT",
              help="Start from a trained model's weights and vocabulary instead of random ones "
                   "(a second stage with new settings, or fine-tuning on another corpus). The "
                   "optimizer and schedule start afresh; only --dropout and --weight-drop may "
                   "change the model.")
@_train_options
@click.pass_context
def train(ctx, corpus, val_path, out_dir, config_file, time_budget, device, threads, tie_weights,
          resume, init_from, **flags):
    """Train a model on CORPUS: UTF-8 text, one poem per line, or running text (prose, a play),
    or a prepared corpus directory (`poetgen corpus encode`).

    \b
    Examples:
      poetgen train corpus.txt                          # 10 minutes with the default model
      poetgen train tinyshakespeare.txt --val-fraction 0.1   # running text: val is the last 10%
      poetgen train tang_train.txt --val tang_val.txt --time-budget 1h --out checkpoints/tang
      poetgen train corpus.txt --out checkpoints/tang --resume   # continue after Ctrl-C
      poetgen train corpus.txt --init checkpoints/tang --dropout 0.4 --out checkpoints/tang2
      poetgen corpus encode big.txt -o corpora/big && poetgen train corpora/big   # > memory
      torchrun --standalone --nproc-per-node 2 -m poetgen train corpora/big      # 2 processes

    The kind of text (--text-kind) is detected from CORPUS and stored in the checkpoint: sampling,
    evaluation and the REPL take their defaults from it (a poem model stops at the end of a poem,
    a prose model writes on). Shows a progress bar; at every evaluation prints validation bits per
    character (bpc, lower is better) and a short sample, and saves best.safetensors (lowest val
    bpc) and last.safetensors.
    Ctrl-C saves `last` and exits; --resume continues exactly where it stopped. Under torchrun,
    the processes share out --batch-size and rank 0 alone prints and writes (README "Training at
    scale").
    """
    import time

    started = time.perf_counter()  # the time budget counts the whole command, reading included
    from poetgen.lm import distributed
    from poetgen.lm.corpus import Vocab
    from poetgen.lm.launch import plan_training
    from poetgen.lm.prepared import load_training_data
    from poetgen.lm.train import TrainingInterrupted, pick_device
    from poetgen.lm.train import train as run_training

    use_threads(threads)
    if tie_weights is not None:
        flags["tie_weights"] = tie_weights
    if val_path is not None and val_path.exists() and val_path.resolve() == corpus.resolve():
        raise ConfigError(f"--val {val_path} is the training corpus itself: its bpc would say "
                          "nothing of text the model has not seen; give held-out text, or leave "
                          "out --val to hold out --val-fraction of the corpus")
    if val_path is not None and flags.get("val_fraction") is not None:
        err.print("[yellow]note:[/] --val-fraction is not used: --val gives the validation text")

    def in_users_words(e: ConfigError) -> ConfigError:
        """`e` naming settings as the user gave them: flags as flags, a config file's fields."""
        given = {name for name, value in {**flags, "time_budget": time_budget,
                                            "device": device}.items() if value is not None}
        from_file = set(load_toml(config_file)) - given if config_file is not None else set()
        return ConfigError(_as_flags(str(e), from_file))

    try:
        plan = plan_training(corpus, {**flags, "device": device}, config_file=config_file,
                             time_budget=time_budget, out_dir=out_dir, resume=resume,
                             init=init_from,
                             notify=lambda note: err.print(f"[yellow]note:[/] {note}"))
    except ConfigError as e:
        if config_file is not None and str(config_file) in str(e):
            raise  # about the file itself
        raise in_users_words(e) from None
    model_config, config, out_dir = plan.model_config, plan.config, plan.out_dir
    meta = plan.base_meta

    from poetgen.app.progress import TrainProgress

    # One process, or one of several that torchrun started: then rank 0 alone prints.
    with distributed.session(pick_device(config.device).type) as world:
        try:
            data = load_training_data(corpus, val_path, config,
                                      Vocab.from_list(meta["vocab"]) if meta else None,
                                      kind=model_config.text_kind)
        except ConfigError as e:
            raise in_users_words(e) from None
        model_config = replace(model_config, text_kind=data.text_kind)  # recorded in the checkpoint
        progress = TrainProgress(err, config) if world.is_main else None
        try:
            result = run_training(data.train_ids, data.val_ids, data.vocab, model_config, config,
                                  out_dir, resume=resume, init=plan.init, started=started,
                                  callbacks=progress.callbacks() if progress else None)
        except ConfigError as e:
            raise in_users_words(e) from None
        except TrainingInterrupted as e:
            if progress:
                progress.close()
                # What the run's data needs again (the model and settings are in `last`).
                val = f" --val {shlex.quote(str(val_path))}" if val_path else ""
                again = (f"poetgen train {shlex.quote(str(corpus))}{val} "
                         f"--out {shlex.quote(str(out_dir))} --resume")
                err.print(f"[yellow]Interrupted at step {e.step}: saved {e.checkpoint}.[/] "
                          "Continue with: " + (again if world.size == 1 else
                                               f"the same torchrun command, running -m {again}"))
            ctx.exit(130)
        finally:
            if progress:
                progress.close()
    if world.is_main:
        err.print(f"Done: {result.steps} steps, best val bpc {result.best_val_bpc:.4f}, "
                  f"checkpoints in {result.run_dir}/ (best.safetensors, last.safetensors, "
                  "metrics.csv)")


# ----------------------------------------------------------------------------------------------
# sample


_CHECKPOINT_HELP = ("Checkpoint file or run directory, or `default` for the bundled model. "
                    "[default: $POETGEN_CHECKPOINT, else the newest under ./checkpoints, "
                    "else the bundled model]")


_DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps"]


def use_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# Sampling, scoring and the REPL run the model one small step at a time (a batch of at most a
# few dozen rows): a second thread saves little on an idle machine, and on a busy one its
# threads wait for each other. Measured with bench/quality_bench.py time (one default 七绝, this
# 2-core machine at load average 5-8): 0.24-0.27 s of CPU with one thread, 2.3 s with two.
MODEL_STEP_THREADS = 1


def device_options(f):
    """--device, --threads and --precision: where and how a command runs its model (a matter of
    the machine, not a generation setting)."""
    f = click.option("--precision", type=click.Choice(INFERENCE_PRECISIONS), default="auto",
                     show_default=True, help=INFERENCE_PRECISION_HELP)(f)
    f = click.option("--threads", type=click.IntRange(1), default=None,
                     help=f"CPU threads torch may use. [default: {MODEL_STEP_THREADS}: the "
                          "model runs a small step at a time, where more threads mostly "
                          "wait]")(f)
    return click.option("--device", default="auto", show_default=True, metavar="DEVICE",
                        shell_complete=lambda *a: _DEVICES,
                        help="Where the model runs: auto (cuda, else mps, else cpu), cpu, "
                             "cuda, cuda:N or mps.")(f)


class Loaded:
    """A checkpoint loaded for a command, with how it was chosen: a default picked out of sight
    is named on stderr, and in any error about what the model can write."""

    def __init__(self, spec: str | None, device: str = "cpu", threads: int | None = None,
                 precision: str = "auto",
                 choosing: str = "-c PATH chooses another, -c default the bundled Tang model"):
        """choosing: how to give the command another checkpoint, for the note on a default."""
        from poetgen.lm import checkpoint as ckpt_mod
        from poetgen.lm.train import pick_device

        use_threads(threads or MODEL_STEP_THREADS)
        where = pick_device(device)
        self.path, self.why = ckpt_mod.choose(spec)
        if self.implicit:
            err.print(f"[dim]using {self.path} ({self.why}); {choosing}, `poetgen checkpoints` "
                      "lists them[/]")
        self.ck = ckpt_mod.load_checkpoint(self.path, device=where)
        self.ck.model.inference_precision = precision
        for note in self.ck.notes:  # e.g. an old checkpoint format
            err.print(f"[yellow]note:[/] {note}")

    @property
    def implicit(self) -> bool:
        return self.why not in ("given", "the bundled model")

    def blame(self, error: PoetgenError) -> PoetgenError:
        """`error`, naming the checkpoint when the user did not choose it."""
        if not self.implicit:
            return error
        return type(error)(f"{error} (model: {self.path}, {self.why}; -c default for the bundled "
                           "Tang model)")


class SettingType(click.ParamType):
    """A generation setting's value, parsed and checked by its entry in the settings table."""

    def __init__(self, field_name: str):
        self.field_name = field_name
        self.option = GenerationSettings.options()[field_name]
        self.name = self.option.metavar or (self.option.choices and "|".join(self.option.choices)) \
            or type(GenerationSettings.default(field_name)).__name__.upper()

    def get_metavar(self, param, ctx=None) -> str:
        return self.name  # as typed: pingshui|modern|off, not click's PINGSHUI|MODERN|OFF

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        return GenerationSettings.parse(self.field_name, value, "cli")  # ConfigError: one line

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(c) for c in self.option.choices if c.startswith(incomplete)]


def generation_options(only: tuple[str, ...] | None = None, defaults: dict | None = None):
    """The command-line options of GenerationSettings' fields (those for the CLI, or `only`).

    `defaults` overrides a field's default for this command (e.g. `eval --generate` seeds with 0).
    Options default to None so that the command knows which were given.
    """
    defaults = defaults or {}

    def decorate(f):
        for name, option in reversed(GenerationSettings.options("cli").items()):
            if only is not None and name not in only:
                continue
            default = defaults.get(name, GenerationSettings.default(name))
            help = option.help
            if option.flag:
                f = click.option(option.public("cli"), name, is_flag=True, default=None,
                                 help=help)(f)
                continue
            if name in defaults:  # the table's "[default: ...]" is not this command's
                help = re.sub(r"\s*\[default: [^]]*\]", "", help)
            shown = "" if default in (None, "") or "[default" in help else f" [default: {default}]"
            f = click.option(option.public("cli"), name, type=SettingType(name), default=None,
                             help=help + shown)(f)
        return f
    return decorate


def typed_options(names) -> set[str]:
    """Those of the current command's parameters `names` given on its command line (whatever
    their value: `--form off` is given, as None)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    return {name for name in names
            if ctx and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}


def settings_from_options(values: dict, defaults: dict | None = None) -> GenerationSettings:
    """GenerationSettings from the options given, checked as the CLI names them. An option's
    None is "not given", unless the command line gave it (`--form off`: off, not the default)."""
    typed = typed_options(values)
    given = {k: v for k, v in values.items() if v is not None or k in typed}
    return GenerationSettings(**{**(defaults or {}), **given}).validate("cli")


@cli.command()
@click.option("--checkpoint", "-c", default=None, help=_CHECKPOINT_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sample on stdout.")
@device_options
@generation_options()
def sample(checkpoint, as_json, device, threads, precision, **values):
    """Generate text or poems from a trained model.

    \b
    Examples:
      poetgen sample --temp 0.8 --n 5
      poetgen sample --prime 春风 --seed 7 --json
      poetgen sample --form 七绝 --rhyme pingshui --tones strict --by-line
      poetgen sample --form 五律 --acrostic 春江花月 --best-of 8
      poetgen sample --form 5x4 --pattern '??春??' --rhyme-group 下平七阳
      poetgen sample --form 七绝 --theme 秋 --seed 7        # keywords from the theme, shown
      poetgen sample --form 七律 --keywords 春,雨,江,明月   # each placed where its tones fit
      poetgen sample -c checkpoints/shakespeare --prime-file opening.txt --max-chars 500

    A model of poems (one per line) writes until the end of a poem; a model of running text
    (prose, plays) writes --max-chars characters, and several samples are separated by a rule.
    Themes, coherence and 对仗 use corpus statistics: the checkpoint directory's
    lexicon.safetensors (`poetgen corpus lexicon`), else those of the bundled Tang model.
    """
    from poetgen.verse.lexicon import lexicon_for
    from poetgen.verse.plan import describe_plan
    from poetgen.write import write

    settings = settings_from_options(values)
    loaded = Loaded(checkpoint, device, threads, precision)
    ck = loaded.ck
    lexicon = lexicon_for(ck.path) if settings.writes_poem else None
    try:
        written = write(ck.model, ck.vocab, settings, side="cli", lexicon=lexicon)
    except PoetgenError as e:
        raise loaded.blame(e) from None
    if as_json:
        for item in written:
            click.echo(json.dumps(item.to_dict(), ensure_ascii=False))
        return
    from poetgen.app.render import verse_rows

    texts = [verse_rows(w.text) if settings.by_line else w.text for w in written]
    running = ck.model.config.text_kind == "running"
    for i, (item, text) in enumerate(zip(written, texts)):
        if i and (running or settings.by_line):  # where one multi-line sample ends
            click.echo(SAMPLE_RULE if running else "")
        if getattr(item, "plan", None):
            click.echo(describe_plan(item.plan), err=True)
        click.echo(text)


SAMPLE_RULE = "─" * 40  # between samples of running text, which has blank lines of its own


# ----------------------------------------------------------------------------------------------
# eval and info


def _complete_forms(incomplete: str) -> list[str]:
    """Complete the last form of a comma-separated list: `五绝,七` -> `五绝,七绝`, `五绝,七律`."""
    done, _, last = incomplete.rpartition(",")
    forms = GenerationSettings.options()["form"].choices
    return [(done + "," if done else "") + f for f in forms if f.startswith(last)]


UNKNOWN_WARNING = 0.05  # eval warns above this share of unknown characters (tang_val: 0.15%)

# The generation settings `eval --generate` offers (its --form is a list of forms to measure).
EVAL_GENERATION = ("temperature", "top_k", "top_p", "seed", "rhyme", "tones", "readings",
                   "no_repeat", "ban", "repeat_penalty", "theme", "keywords", "best_of", "line_keep",
                   "coherence",
                   "parallelism", "beam", "novel")
EVAL_DEFAULTS = {"seed": 0}  # the measured poems are the same poems each run unless --seed is given


@cli.command("eval")
@click.argument("checkpoint")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per line).")
@click.option("--generate", type=click.IntRange(1), default=None,
              help="Also write this many constrained poems per form and measure them.")
@click.option("--form", "forms", default="五绝,五律,七绝,七律", show_default=True,
              shell_complete=lambda ctx, param, incomplete: _complete_forms(incomplete),
              help="Forms for --generate, comma-separated.")
@click.option("--corpus", "copy_corpus", type=click.Path(path_type=Path), default=None,
              help="Training corpus: measure how much the poems copy from it.")
@click.option("--real", "real_file", type=click.Path(path_type=Path), default=None,
              help="Real poems (one per line, e.g. tang_val.txt) measured the same way, side by side.")
@device_options
@generation_options(only=EVAL_GENERATION, defaults=EVAL_DEFAULTS)
def eval_cmd(checkpoint, file, as_json, generate, forms, copy_corpus, real_file, device, threads,
             precision, **values):
    """Bits per character of CHECKPOINT on FILE, and/or metrics of generated poems.

    FILE is read the way the model learned its text (`text_kind` in `poetgen info`): a model of
    one poem per line scores each line alone from the poem-start state, many lines per batch; a
    model of running text reads FILE as one stream with the state carried across lines. Either
    way in pieces, so any size fits in memory. CHECKPOINT may be `default`.

    \b
    Examples:
      poetgen eval default tang_val.txt
      poetgen eval default --generate 200 --real tang_val.txt --corpus tang_train.txt
    """
    if file is None and generate is None:
        raise ConfigError("give a FILE to score, or --generate N to measure generated poems")
    if generate is None:  # the options of generated poems would silently do nothing
        typed = typed_options(["forms", "copy_corpus", "real_file", *values])
        unused = [p.opts[0] for p in click.get_current_context().command.params
                  if p.name in typed]
        if unused:
            raise ConfigError(f"{', '.join(unused)} measure generated poems: add --generate N, or "
                              "leave them out to score FILE alone")
    # A form for validate() to check the settings against; the poems take theirs from --form.
    settings = settings_from_options(values, defaults={**EVAL_DEFAULTS, "form": "五绝"})
    try:  # checked before the model loads
        form_names = [GenerationSettings.parse("form", f.strip(), "cli")
                      for f in forms.split(",") if f.strip()]
    except ConfigError:
        form_names = [None]
    if generate is not None and (not form_names or None in form_names):
        raise ConfigError(f"--form needs the forms to measure, comma-separated (五绝, 五律, 七绝, "
                          f"七律, or 5x4 5x8 7x4 7x8), not {forms!r}")
    ck = Loaded(checkpoint, device, threads, precision).ck
    if file is not None:
        from poetgen.lm.corpus import iter_text
        from poetgen.lm.evaluate import evaluate_file
        from poetgen.app.progress import progress_bar

        total = sum(len(text) for text in iter_text(file))  # a cheap pass: the bar ends at 100%
        if total == 0:
            raise PoetgenError(f"{file}: the file is empty; nothing to evaluate")
        with progress_bar(total=total, unit=" chars", desc="scoring", leave=False) as bar:
            r = evaluate_file(ck.model, ck.vocab, file, progress=bar.update)
        unknown_share = r.unknown / max(1, r.chars)
        figures = {"checkpoint": str(ck.path), "file": str(file), "bpc": round(r.bpc, 4),
                   "perplexity": round(r.perplexity, 2), "chars": r.chars, "unknown_chars": r.unknown,
                   "unknown_share": round(unknown_share, 4)}
        if unknown_share > UNKNOWN_WARNING:
            err.print(f"[yellow]warning:[/] {unknown_share:.1%} of {file}'s characters are outside "
                      f"the model's vocabulary of {len(ck.vocab):,}: this model never learned text "
                      "like it, so the figure says little about how well it models it")
        if as_json:
            click.echo(json.dumps(figures, ensure_ascii=False))
        else:
            click.echo(f"{file}: {r.bpc:.4f} bits/char, perplexity {r.perplexity:.2f} over "
                       f"{r.chars:,} characters ({r.unknown:,} outside the vocabulary)")
    if generate is not None:
        from poetgen.app.progress import progress_bar
        from poetgen.write import compare_generated

        from poetgen.verse.lexicon import lexicon_for

        rows = compare_generated(
            ck.model, ck.vocab, form_names, generate, settings, copy_corpus=copy_corpus,
            real_file=real_file,
            progress=lambda forms: progress_bar(forms, desc="forms", leave=False),
            lexicon=lexicon_for(ck.path))
        if as_json:
            for row in rows:
                click.echo(json.dumps(row.as_dict(), ensure_ascii=False))
        else:
            out.print(metrics_table(rows))


def metrics_table(rows) -> Table:
    """Metrics down, one column per (form, source): narrow enough for a terminal."""
    table = Table(title="Generated poems next to real ones")
    table.add_column("metric")
    for row in rows:
        table.add_column(f"{row.form}\n{row.source}", justify="right")
    metrics = [("poems", "poems", "{}"), ("form ok", "form_ok", "%"),
               ("rhyme 平水韵", "rhyme_pingshui", "%"), ("rhyme 新韵", "rhyme_modern", "%"),
               ("tones (loose)", "tones_loose", "%"), ("tones (strict)", "tones_strict", "%"),
               ("distinct-1", "distinct_1", "{:.3f}"), ("distinct-2", "distinct_2", "{:.3f}"),
               ("copied lines", "copy_lines", "%"), ("copied run ≥4", "copy_run4", "%"),
               ("longest copy", "longest_copy", "{}"), ("log-prob/char", "mean_logprob", "{:.3f}"),
               ("重韵 (rhyme twice)", "repeated_rhyme", "%"), ("重字 (char twice)", "repeated_char", "%"),
               ("coherence", "coherence", "{:.3f}"), ("对仗 (lines 3-6)", "parallelism", "{:.3f}")]
    for title, key, fmt in metrics:
        cells = []
        for row in rows:
            v = getattr(row, key)
            cells.append("–" if v is None else f"{100 * v:.1f}%" if fmt == "%" else fmt.format(v))
        table.add_row(title, *cells)
    return table


@cli.command()
@click.argument("checkpoint", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(checkpoint, as_json):
    """What a checkpoint holds: config, size, vocabulary, training summary, checksum.

    CHECKPOINT is a .safetensors file, a run directory (its best), or `default` (the bundled
    Tang model); without it, the default that `poetgen checkpoints` names.

    \b
    Examples:
      poetgen info checkpoints/tang10m
      poetgen info default --json
    """
    ck = Loaded(checkpoint, choosing="`poetgen info PATH` shows another, `poetgen info default` "
                                     "the bundled Tang model").ck
    training = ck.meta.get("training", {})
    summary = {"checkpoint": str(ck.path), "parameters": ck.model.num_parameters(),
               "vocab_size": len(ck.vocab), "file_bytes": ck.path.stat().st_size,
               "format": ck.meta["format"], "sha256": ck.sha256,
               "config": to_dict(ck.model.config), "train_config": ck.meta.get("train_config", {}),
               "training": training, "init": ck.meta.get("init")}
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    table = Table(title=str(ck.path), show_header=False)
    table.add_row("parameters", f"{summary['parameters']:,}")
    table.add_row("vocabulary", f"{len(ck.vocab):,} characters")
    table.add_row("learned", TEXT_KIND_WORDS.get(ck.model.config.text_kind, "?"))
    for k, v in summary["config"].items():
        if k not in ("vocab_size", "text_kind"):  # shown above, in words
            table.add_row(k, str(v))
    units = {"elapsed": lambda v: f"{v:,.1f} s ({_duration(v)}) of training",
             "epochs": lambda v: f"{v:,.2f}", "val_bpc": lambda v: f"{v:.4f} bits/char",
             "best_val_bpc": lambda v: f"{v:.4f} bits/char",
             "train_chars": lambda v: f"{v:,} characters",
             "peak_lr": lambda v: f"{v:.4g}" + (" (from the run's length)"
                                               if not summary["train_config"].get("lr") else "")}
    for k in ("step", "epochs", "elapsed", "val_bpc", "best_val_bpc", "train_chars", "peak_lr"):
        if training.get(k) is not None and (k != "peak_lr" or training[k] > 0):  # 0: not fixed
            table.add_row(k, units.get(k, lambda v: f"{v:,}")(training[k]))
    if summary["init"]:
        init = summary["init"]
        sha = f", sha256 {init['sha256'][:12]}…" if init["sha256"] else ""
        table.add_row("started from", f"{init['from']} (step {init['step']}{sha})")
    table.add_row("sha256", f"{ck.sha256} ({ck.meta['format']})")
    out.print(table)


TEXT_KIND_WORDS = {"lines": "one document per line (poems): sampling stops at the end of one",
                   "running": "running text (prose): sampling writes on across lines"}


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@cli.command("checkpoints")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per checkpoint.")
def checkpoints_cmd(as_json):
    """List the checkpoints poetgen sees from here, and which one is the default.

    The default (what sample and repl use without -c, info without a CHECKPOINT) is
    $POETGEN_CHECKPOINT, else the newest best.safetensors under ./checkpoints, else the bundled
    Tang model (`-c default`).

    \b
    Examples:
      poetgen checkpoints
      POETGEN_CHECKPOINT=checkpoints/tang10m poetgen checkpoints --json
    """
    from poetgen.lm import checkpoint as ckpt_mod

    try:
        chosen, why = ckpt_mod.choose(None)
    except PoetgenError:
        chosen, why = None, ""
    paths = list(reversed(ckpt_mod.find_checkpoints()))  # newest first
    same = lambda a, b: b is not None and a.resolve() == b.resolve()  # noqa: E731
    if chosen is not None and not any(same(p, chosen) for p in paths):
        paths.insert(0, chosen)  # $POETGEN_CHECKPOINT outside ./checkpoints
    if ckpt_mod.BUNDLED.exists() and not any(same(p, ckpt_mod.BUNDLED) for p in paths):
        paths.append(ckpt_mod.BUNDLED)
    rows = []
    for path in paths:
        row = {"checkpoint": "default" if path == ckpt_mod.BUNDLED else str(path),
               "path": str(path), "default": same(path, chosen)}
        try:
            meta = ckpt_mod.read_meta(path)
        except PoetgenError as e:
            row["error"] = str(e)
        else:
            training = meta.get("training", {})
            row.update(text_kind=meta.get("config", {}).get("text_kind", "lines"),
                       vocab_size=len(meta.get("vocab", [])), step=training.get("step"),
                       val_bpc=training.get("val_bpc"),
                       modified=datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M"))
        rows.append(row)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        raise PoetgenError("no checkpoint under ./checkpoints and no bundled model; train one "
                           "with `poetgen train CORPUS`")
    width = max(len(row["checkpoint"]) for row in rows)
    for row in rows:  # plain rows, not a table: paths must not be cut at a terminal's width
        mark = "→" if row["default"] else " "
        if "error" in row:
            click.echo(f"{mark} {row['checkpoint']:<{width}}  {row['error']}")
            continue
        bpc = f"{row['val_bpc']:.4f}" if row["val_bpc"] is not None else "–"
        step = f"{row['step']:,}" if row["step"] is not None else "–"
        click.echo(f"{mark} {row['checkpoint']:<{width}}  {row['text_kind']:<7}  "
                   f"{row['vocab_size']:>6,} chars  step {step:>7}  val bpc {bpc:>6}  "
                   f"{row['modified']}")
    click.echo(f"→ the default, used without -c: {chosen} ({why})" if chosen else
               "no default: train a model, or pass -c PATH")


# ----------------------------------------------------------------------------------------------
# check


@cli.command()
@click.argument("poem")
@click.option("--rhyme", type=click.Choice(RHYME_SCHEMES), default="pingshui",
              show_default=True, help="Rhyme scheme to judge by.")
@click.option("--tones", type=click.Choice(TONE_MODES), default="loose",
              show_default=True, help="How strictly to judge 平仄 (see `sample --help`).")
@click.option("--readings", type=click.Choice(READINGS), default="all", show_default=True,
              help="Which readings of a 多音字 count: all (a rare one is allowed with a warning naming "
                   "it) or common (only readings Tang poets really used; a rare one fails).")
@click.option("--warnings-fail", is_flag=True,
              help="Exit 1 on warnings too (a rare reading, a 拗 outside the accepted forms, 三仄尾).")
@click.option("--sanzewei", is_flag=True, help="Warn about lines ending in three 仄 (三仄尾).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per poem.")
def check(poem, rhyme, tones, readings, warnings_fail, sanzewei, as_json):
    """Check a poem's form, rhyme and tones. POEM is the text, a file with one poem per line, or
    - to read poems (one per line) from stdin.

    \b
    Examples:
      poetgen check 白日依山尽，黄河入海流。欲穷千里目，更上一层楼。
      poetgen check poems.txt --json
      poetgen sample --form 七绝 --n 5 | poetgen check -
      poetgen check poems.txt --readings common --warnings-fail

    Shows every character with its pinyin, 平/仄 and rhyme group, names the form, the best-matching
    tonal template and rhyme group, and gives a verdict (近体: passes; 古体, 出韵, 非律绝: why
    not) with every violation. Accepted variants (孤平拗救, 对句相救, the special form
    平平仄平仄, 首句借邻韵) are listed as notes; a rare reading or a 拗 outside those forms is a
    warning. Exits 0 if all poems pass, else 1 (with --warnings-fail, warnings count too).
    """
    from poetgen.verse.check import check_poem
    from poetgen.app.render import render_report

    poems = _poems_to_check(poem)
    reports = [check_poem(p, rhyme=rhyme, tones=tones, readings=readings, sanzewei=sanzewei)
               for _, p in poems]
    for r in reports:
        if as_json:
            click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
        else:
            out.print(render_report(r))
    if not all(r.ok and not (warnings_fail and r.warnings) for r in reports):
        sys.exit(1)


def _poems_to_check(poem: str) -> list[tuple[str, str]]:
    """(where, text) of each poem POEM stands for, refusing input that is no Chinese verse with
    a message that says so (the checker would report an empty grid of '?' marks)."""
    from poetgen.verse.prosody import is_han

    path = Path(poem)
    if poem == "-":
        lines = _utf8_lines(sys.stdin.buffer.read(), "stdin", "pipe UTF-8 text")
        poems = [(f"stdin line {i}", p) for i, p in enumerate(lines, 1) if p.strip()]
        if not poems:
            raise ConfigError("stdin held no poem; pipe poems one per line, e.g. "
                              "`poetgen sample --form 七绝 | poetgen check -`")
    elif len(poem) < 256 and path.is_file():  # read here, not with lm.corpus: that imports torch
        lines = _utf8_lines(path.read_bytes(), str(path), "re-save the file as UTF-8")
        poems = [(f"{path} line {i}", p) for i, p in enumerate(lines, 1) if p.strip()]
        if not poems:
            raise ConfigError(f"{path} holds no poem; write poems into it one per line")
    elif not poem.strip():
        raise ConfigError("POEM is empty; give the text of a poem, a file with one poem per "
                          "line, or - to read poems from stdin")
    elif not any(is_han(c) for c in poem):  # a mistyped path, most likely
        shown = poem if len(poem) <= 40 else poem[:40] + "…"
        raise ConfigError(f"POEM {shown!r} is no file here and no Chinese text; check the "
                          "path, or give the poem's text itself")
    else:
        poems = [("POEM", poem)]
    for where, text in poems:
        if not any(is_han(c) for c in text):
            shown = text if len(text) <= 40 else text[:40] + "…"
            raise ConfigError(f"{where}: {shown!r} has no Chinese characters; `poetgen check` "
                              "judges Chinese regular verse (五绝 五律 七绝 七律)")
    return poems


def _utf8_lines(data: bytes, where: str, fix: str) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line, column = before.count(b"\n") + 1, e.start - before.rfind(b"\n")  # column in bytes
        raise ConfigError(f"{where}: not valid UTF-8 at byte {e.start} (line {line}, column "
                          f"{column}); {fix}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


# ----------------------------------------------------------------------------------------------
# repl


# Settings a REPL session can start with (all of them can be changed inside with :NAME VALUE).
REPL_START = ("form", "seed", "temperature", "rhyme", "tones")


@cli.command()
@click.option("--checkpoint", "-c", default=None, help=_CHECKPOINT_HELP)
@device_options
@generation_options(only=REPL_START, defaults={"form": "七绝 for a model of Chinese verse"})
@click.pass_context
def repl(ctx, checkpoint, device, threads, precision, **values):
    """Write poems (or text) together with the model, interactively.

    Type the start of a poem and the model completes it (with a model of running text, prose,
    it starts in free mode and continues what you type). Inside, :help lists every command;
    the main ones:

    \b
      :line 3      rewrite line 3 only (of poem #2 of several: :line 3 #2)
      :pick        choose each next character from the model's top choices
      :check       pinyin, 平仄 and rhyme of the poem (:check POEM: any poem)
      :save FILE   append the poem to FILE
      :form 五绝   settings: :temp 0.7, :acrostic 春江花月, :n 3 (Tab completes)

    In a terminal: a status bar shows the settings, history persists (Up, Ctrl-R), Ctrl-C stops
    a poem being written, Ctrl-D quits, and every poem is also kept in a session file under
    $XDG_DATA_HOME/poetgen/sessions (~/.local/share/poetgen/sessions), named at start.

    When stdin is not a terminal, commands are read line by line: poems and reports go to
    stdout, errors to stderr, and the exit status is 1 if any command failed (0 otherwise):

    \b
      printf '春风\\n:line 2\\n:check\\n:save poems.txt\\n' | poetgen repl
    """
    from poetgen.app.repl import run
    from poetgen.verse.lexicon import lexicon_for
    from poetgen.write import session_defaults

    loaded = Loaded(checkpoint, device, threads, precision)
    ck = loaded.ck
    try:
        settings = settings_from_options(values, defaults=session_defaults(ck.model, ck.vocab))
        if values.get("form"):  # a form asked for is a poem to write, whatever the model learned
            from poetgen.verse.constrain import compile_spec

            settings = settings.replace(mode="poem")
            compile_spec(settings.poem_spec(prime=""), ck.vocab)  # refused now, not at a poem
    except PoetgenError as e:
        raise loaded.blame(e) from None
    ctx.exit(run(ck.model, ck.vocab, out, sys.stdin, settings, err_console=err,
                 debug=bool(ctx.obj and ctx.obj.get("debug")),
                 load_lexicon=lambda: lexicon_for(ck.path)))


# ----------------------------------------------------------------------------------------------
# corpus


@cli.group()
def corpus():
    """Build training text from chinese-poetry JSON, encode it for training at scale, inspect
    corpora, fetch known sources."""


_EXCLUDE_HELP = ("Drop every poem sharing a verse segment (4+ characters between punctuation) with "
                 "this list of SHA-256 hashes, one per line, e.g. "
                 "../shared/corpora/heldout_lines.sha256 (the poems that validate and judge "
                 "models).")


@corpus.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Output text file, one poem per line (with --val-fraction: OUT_train / OUT_val).")
@click.option("--form", "forms", default=None,
              help="Keep only regular verse of these forms, e.g. 5x4,5x8,7x4,7x8 (or 五绝,七律); "
                   "`other` keeps every poem that is not regular verse (古体, 杂言, fragments).")
@click.option("--simplified", is_flag=True, help="Convert traditional to simplified (OpenCC t2s).")
@click.option("--dedupe", is_flag=True, help="Drop poems identical to an earlier one.")
@click.option("--strip-notes", is_flag=True, help="Remove notes such as （一作…） and keep the poem.")
@click.option("--min-count", type=click.IntRange(0), default=0,
              help="Drop poems with a character seen fewer times in the kept poems.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.0,
              help="Hold out this share as OUT_val (poems sharing a verse line stay together).")
@click.option("--exclude", "exclude", type=click.Path(path_type=Path), default=None,
              metavar="HASHES", help=_EXCLUDE_HELP)
def corpus_build(sources, out_path, forms, simplified, dedupe, strip_notes, min_count, val_fraction,
                 exclude):
    """Build OUT from SOURCES: chinese-poetry JSON files or folders, or plain text files.

    \b
    Examples:
      # the shared Tang corpus from the raw collection
      poetgen corpus build ../shared/corpora/chinese-poetry -o corpora/tang.txt \\
          --form 5x4,5x8,7x4,7x8 --simplified --dedupe
      # 全唐诗 but its regular verse, for pretraining, without any held-out poem
      poetgen corpus build corpora/raw/tang -o corpora/tang-other.txt --form other \\
          --simplified --dedupe --strip-notes --exclude ../shared/corpora/heldout_lines.sha256
    """
    from poetgen.verse.corpus_tools import BuildOptions, build_corpus
    from poetgen.app.progress import progress_bar
    from poetgen.verse.prosody import get_form

    from poetgen.verse.corpus_tools import OTHER

    wanted = (frozenset(OTHER if f.strip() == OTHER else get_form(f.strip()).code
                        for f in forms.split(",") if f.strip()) if forms else None)
    options = BuildOptions(forms=wanted, simplified=simplified, dedupe=dedupe,
                           strip_notes=strip_notes, min_count=min_count, val_fraction=val_fraction,
                           exclude=exclude)
    with progress_bar(unit=" poems", desc="reading") as bar:
        report = build_corpus(list(sources), out_path, options, progress=lambda n: bar.update(1))
    table = Table(title=f"{report.read:,} poems read")
    table.add_column("result")
    table.add_column("poems", justify="right")
    table.add_row("[green]kept[/]", f"{report.kept:,}")
    for reason, n in report.dropped.most_common():
        table.add_row(f"dropped: {reason}", f"{n:,}")
    for form, n in sorted(report.forms.items()):
        table.add_row(f"  kept {form}", f"{n:,}")
    err.print(table)
    for path, n in report.outputs.items():
        click.echo(f"wrote {path} ({n:,} poems)")


@corpus.command("lexicon")
@click.argument("corpus_file", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="File to write. Saved as lexicon.safetensors beside a run's checkpoints, it is "
                   "what sample, eval and the REPL use for that run.")
def corpus_lexicon(corpus_file, out_path):
    """Corpus statistics for themes, coherence and 对仗, from CORPUS_FILE (one poem per line).

    Which characters and words keep company across the lines of a poem (themes, coherence),
    where each stands in a line (keyword placement), and which face each other in the middle
    couplets of 律诗 (对仗). Build it from the training split only, never validation text.

    \b
    Example (the file shipped with the bundled model):
      poetgen corpus lexicon ../shared/corpora/tang_train.txt -o poetgen/data/lexicon.safetensors
    """
    from poetgen.lm.corpus import read_text
    from poetgen.verse.lexicon import build_lexicon

    text = read_text(corpus_file)
    with err.status("counting co-occurrences and reducing them (a minute for 30,000 poems)"):
        lex = build_lexicon(text.splitlines(), source=corpus_file.name,
                            source_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
    lex.save(out_path)
    click.echo(f"wrote {out_path} ({len(lex.tokens):,} characters and words from "
               f"{lex.meta['poems']:,} poems, {out_path.stat().st_size / 1e6:.1f} MB)")


@corpus.command("encode")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the prepared corpus (corpus.json and the id files).")
@click.option("--val", "val_path", type=click.Path(path_type=Path), default=None,
              help="Validation text. Default: a fixed share of the lines (--val-fraction).")
@click.option("--vocab-from", "vocab_from", default=None, metavar="CHECKPOINT",
              help="Use this checkpoint's vocabulary instead of building one (a corpus to "
                   "fine-tune it on with `train --init`).")
@_train_options(only=ENCODE_SETTINGS + ("text_kind",))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def corpus_encode(files, out_dir, val_path, vocab_from, as_json, text_kind, **flags):
    """Encode text FILES (one after another) into a prepared corpus OUT that `train` memory-maps.

    For corpora larger than memory, or read by several training processes: `train` then reads
    the token ids from disk as it goes instead of holding the text and its ids in memory. The
    vocabulary (--min-count, --max-vocab), the kind of text and the validation share are fixed
    here; the ids are the ones `train` would make from the same text with the same settings.

    \b
    Examples:
      poetgen corpus encode corpora/song.txt corpora/tang_other.txt -o corpora/pretrain
      poetgen corpus encode tang_train.txt --val tang_val.txt --vocab-from checkpoints/pre \\
          -o corpora/tang-finetune
      poetgen train corpora/pretrain --out checkpoints/pre
    """
    from poetgen.app.progress import progress_bar
    from poetgen.lm import checkpoint as ckpt_mod
    from poetgen.lm.corpus import Vocab
    from poetgen.lm.prepared import encode_corpus

    config = TrainConfig(**{k: v for k, v in flags.items() if v is not None})
    config.validate()
    vocab = None
    if vocab_from:
        vocab = Vocab.from_list(ckpt_mod.read_meta(ckpt_mod.resolve(vocab_from))["vocab"])
    kind = text_kind or "auto"
    passes = 1 + (vocab is None) + (kind == "auto" or (kind == "running" and not val_path))
    total = sum(p.stat().st_size for p in files if p.is_file()) * passes + (
        val_path.stat().st_size if val_path and val_path.is_file() else 0)
    with progress_bar(total=total, unit="B", unit_scale=True, desc="encoding") as bar:
        report = encode_corpus(files, out_dir, config, val_path, vocab, kind, progress=bar.update)
    summary = {"path": str(report.path), "vocab_size": len(report.vocab), "dtype": report.dtype,
               "text_kind": report.text_kind,
               "train_tokens": report.tokens["train"], "val_tokens": report.tokens["val"],
               "unknown_share": {side: round(report.unknown[side] / report.tokens[side], 6)
                                 for side in report.tokens}, "fingerprint": report.fingerprint}
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"wrote {report.path}/: {report.tokens['train']:,} training and "
               f"{report.tokens['val']:,} validation ids ({report.dtype}), vocabulary "
               f"{len(report.vocab):,}, {report.text_kind} text")
    for side, share in summary["unknown_share"].items():
        if share:
            click.echo(f"  {100 * share:.3f}% of the {side} characters are outside the vocabulary "
                       "(the unknown token)")


@corpus.command("stats")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def corpus_stats_cmd(file, as_json):
    """Characters, lines, vocabulary, coverage, forms and quatrain rhyme rate of FILE.

    \b
    Examples:
      poetgen corpus stats ../shared/corpora/tang_train.txt
      poetgen corpus stats corpora/tang.txt --json
    """
    from poetgen.verse.corpus_tools import corpus_stats

    stats = corpus_stats(file)
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False))
        return
    table = Table(title=str(file), show_header=False)
    for key, label in [("characters", "characters (with newlines)"), ("lines", "lines"),
                       ("vocabulary", "distinct characters"),
                       ("chars_for_99pct", "characters covering 99% of tokens"),
                       ("chars_for_99_9pct", "characters covering 99.9% of tokens")]:
        table.add_row(label, f"{stats[key]:,}")
    for form, n in stats["forms"].items():
        table.add_row(f"form {form}", f"{n:,}")
    if stats["quatrains"]:
        table.add_row("quatrains rhyming (平水韵, lines 2/4)",
                      f"{100 * stats['quatrain_rhyme_rate_pingshui']:.1f}%")
    out.print(table)


def _source_names(ctx=None, param=None, incomplete: str = "") -> list[str]:
    """The sources `corpus fetch` knows (for completion and --help); [] if the list is unreadable."""
    from poetgen.verse.corpus_tools import manifest

    try:
        return sorted(n for n in manifest() if n.startswith(incomplete))
    except PoetgenError:
        return []


class _FetchCommand(click.Command):
    """`corpus fetch --help` ends with the names it knows, read when help is shown."""

    def format_epilog(self, ctx, formatter):
        from poetgen.verse.corpus_tools import manifest

        try:
            sources = manifest()
        except PoetgenError as e:
            sources, problem = {}, str(e)
        with formatter.section("Known sources (poetgen/data/sources.toml, or ./corpora/manifest.toml)"):
            if sources:
                formatter.write_dl([(n, sources[n].get("description", "")) for n in sorted(sources)])
            else:
                formatter.write_text(problem)


@corpus.command("fetch", cls=_FetchCommand)
@click.argument("name", shell_complete=_source_names)
@click.option("--url", default=None, help="Download from here instead of the manifest's address.")
@click.option("--sha256", default=None, help="Expected checksum (with --url).")
@click.option("--dest", type=click.Path(path_type=Path), default=Path("corpora"), show_default=True,
              help="Folder for the download and the built text.")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path), default=None,
              help="TOML list of known sources. [default: ./corpora/manifest.toml if present, "
                   "else the list shipped with poetgen]")
@click.option("--exclude", "exclude", type=click.Path(path_type=Path), default=None,
              metavar="HASHES", help=_EXCLUDE_HELP)
def corpus_fetch(name, url, sha256, dest, manifest_path, exclude):
    """Download a known source NAME (listed in poetgen/data/sources.toml) and build DEST/NAME.txt.

    Resumes an interrupted download (run it again), verifies the sha256, then builds the text.

    \b
    Examples:
      poetgen corpus fetch tang          # corpora/tang.txt, simplified, one poem per line
      poetgen corpus fetch tang --exclude ../shared/corpora/heldout_lines.sha256
    """
    from poetgen.verse.corpus_tools import (EXCLUDED, BuildOptions, build_corpus,
                                            check_build_tools, download, extract_members,
                                            manifest)
    from poetgen.app.progress import progress_bar

    entry = dict(manifest(manifest_path).get(name) or {}) if not url else {}
    if not url and not entry:
        known = ", ".join(sorted(manifest(manifest_path)))
        raise ConfigError(f"unknown source {name!r}; known: {known} (or give --url)")
    if url:
        entry = {"url": url, "sha256": sha256, "members": "*.json",
                 "build": {"forms": "5x4,5x8,7x4,7x8", "simplified": True, "dedupe": True}}
    archive = dest / "downloads" / Path(entry["url"]).name

    def bar(total, initial):
        return progress_bar(total=total, initial=initial, unit="B", unit_scale=True,
                            desc=archive.name)

    b = entry.get("build", {})
    forms = frozenset(f.strip() for f in b["forms"].split(",")) if b.get("forms") else None
    options = BuildOptions(forms=forms, simplified=b.get("simplified", False),
                           dedupe=b.get("dedupe", False), strip_notes=b.get("strip_notes", False),
                           exclude=exclude)
    check_build_tools(options)  # before megabytes are downloaded for nothing
    if not archive.exists():
        download(entry["url"], archive, entry.get("sha256"), bar)
    raw = extract_members(archive, entry["members"], dest / "raw" / name)
    report = build_corpus(raw, dest / f"{name}.txt", options)
    held = f", {report.dropped[EXCLUDED]:,} held out by --exclude" if exclude else ""
    click.echo(f"wrote {dest / f'{name}.txt'} ({report.kept:,} of {report.read:,} poems{held})")


# ----------------------------------------------------------------------------------------------
# plot


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="PNG to write. [default: the last RUN_DIR/curve.png]")
def plot(run_dirs, out_path):
    """Draw RUN_DIR/metrics.csv (train and val bits per character against steps) as a PNG.

    Several RUN_DIRs are drawn one after another, as the stages of one model (a run started
    with `train --init` from the one before).

    \b
    Examples:
      poetgen plot checkpoints/tang10m                  # checkpoints/tang10m/curve.png
      poetgen plot checkpoints/tang checkpoints/tang2 -o curve.png
    """
    from poetgen.files import atomic_write_bytes
    from poetgen.app.plot import curve_png, read_metrics

    png = curve_png([read_metrics(d) for d in run_dirs], " → ".join(d.name for d in run_dirs))
    out_path = out_path or run_dirs[-1] / "curve.png"
    atomic_write_bytes(out_path, png)
    click.echo(f"wrote {out_path}")


# ----------------------------------------------------------------------------------------------
# export


@cli.command()
@click.argument("checkpoint")
@click.argument("out_path", type=click.Path(path_type=Path))
@click.option("--half", is_flag=True, help="Store weights in float16 (half the size).")
def export(checkpoint, out_path, half):
    """Write CHECKPOINT's model (no training state) to OUT_PATH, e.g. for release.

    CHECKPOINT must pass its checksum: a corrupt file is refused, never re-signed. Exporting a
    checkpoint in the old format (v1) rewrites it in the current one.

    \b
    Example (the bundled model):
      poetgen export checkpoints/tang poetgen/data/tang.safetensors --half
    """
    import torch

    from poetgen.lm import checkpoint as ckpt_mod

    ck = Loaded(checkpoint).ck
    # An export holds no training state: written over a run's own checkpoint it would end the
    # run's --resume (and over its input, the file it came from).
    if out_path.resolve() == ck.path.resolve() or (
            out_path.name in ("best.safetensors", "last.safetensors")
            and (out_path.parent / "last.safetensors").exists()):
        raise ConfigError(f"{out_path} is a training run's own checkpoint; export to another "
                          "file, e.g. tang.safetensors")
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "config", "vocab", "sha256")}
    meta["exported_from"] = ck.path.name
    meta["dtype"] = "float16" if half else "float32"
    ckpt_mod.save_checkpoint(out_path, ck.model, ck.vocab, meta, dtype=torch.float16 if half else None)
    click.echo(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    try:
        cli(prog_name="poetgen")
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's exit was under way
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(130)
    finally:
        # The command is over, however it ended: a Ctrl-C from here on has nothing left to stop,
        # and one landing during interpreter shutdown would print a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())

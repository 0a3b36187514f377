"""Training progress for the terminal: a tqdm bar, and a rich line at every evaluation."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from tqdm import tqdm

from poetgen.lm.config import TrainConfig

if TYPE_CHECKING:  # the corpus commands use progress_bar without importing torch
    from poetgen.lm.train import Callbacks, EvalInfo, StepInfo


_KIND_WORDS = {"lines": "one document per line", "running": "running text"}


class TrainProgress:
    """Bar over steps when a step or epoch limit is known, else over seconds of the time budget."""

    def __init__(self, console: Console, config: TrainConfig):
        self.console, self.config = console, config
        self.bar: tqdm | None = None
        self.by_time = False

    def callbacks(self) -> Callbacks:
        from poetgen.lm.train import Callbacks

        return Callbacks(on_start=self.start, on_step=self.step, on_eval=self.evaluated)

    def start(self, info: dict) -> None:
        for tmp in info.get("removed", []):
            self.console.print(f"Removed {tmp}, left by a write that was killed midway.")
        processes = info.get("world_size", 1)
        where = info["device"] + (f" × {processes} processes" if processes > 1 else "")
        self.console.print(
            f"Training on {where}: {info['parameters']:,} parameters, vocabulary "
            f"{info['vocab']:,}, {info['train_chars']:,} training / {info['val_chars']:,} "
            f"validation characters, {_KIND_WORDS.get(info.get('text_kind'), 'text')}"
            + (f", resuming at step {info['start_step']}"
                                        if info["start_step"] else ""))
        if info.get("resume_note"):
            self.console.print(f"[yellow]Note:[/] {info['resume_note']}")
        if info.get("init_unknown_share") is not None:
            self.console.print(
                f"{100 * info['init_unknown_share']:.2f}% of the training characters are outside "
                "the vocabulary of the --init checkpoint; they train as the unknown token")
        self.by_time = info["total_steps"] is None
        total = round(info["time_budget"]) if self.by_time else info["total_steps"]
        self.bar = progress_bar(
            total=total, initial=0 if self.by_time else info["start_step"],
            unit="s" if self.by_time else "step", file=self.console.file,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def step(self, info: StepInfo) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"step {info.step} loss {info.loss:.3f} "
                                 f"bpc {info.bpc:.3f} lr {info.lr:.1e} "
                                 f"{info.chars_per_s:,.0f} chars/s", refresh=False)
        position = min(self.bar.total, int(info.elapsed)) if self.by_time else info.step
        self.bar.update(position - self.bar.n)  # tqdm redraws at most every mininterval

    def evaluated(self, info: EvalInfo) -> None:
        best = " [green](best)[/]" if info.val_bpc <= info.best_val_bpc else ""
        with tqdm.external_write_mode():
            self.console.print(f"step {info.step}: val bpc [bold]{info.val_bpc:.4f}[/]{best}, "
                               f"train bpc {info.train_bpc:.4f}")
            self.console.print(f"  [dim]sample:[/] {escape(info.sample.replace(chr(10), ' ⏎ '))}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_bar(iterable=None, file=None, **kwargs) -> tqdm:
    """A tqdm bar (on stderr unless `file` is given) that redraws twice a second in a terminal
    and every 30 s in a log."""
    file = file or sys.stderr
    interactive = getattr(file, "isatty", lambda: False)()
    return tqdm(iterable, file=file, dynamic_ncols=True, mininterval=0.5 if interactive else 30,
                **kwargs)

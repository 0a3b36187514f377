"""Interactive REPL: compose poems together with the model.

Type text to start a poem (the model completes it under the current settings), or a :command.
Settings show in a status line. In a terminal, line editing and history (arrows, Ctrl-R) persist
in the user's data directory; when stdin is not a terminal, commands are read line by line and
output is plain text, so sessions can be scripted and tested.
"""

from __future__ import annotations

import os
import re
import select
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from rich.console import Console
from rich.markup import escape

from poetgen.files import atomic_write_bytes
from poetgen.errors import ConfigError, PoetgenError
from poetgen.settings import GenerationSettings

COMMANDS_HELP = """\
Type text to start a poem (or with :mode free, a prime for :max-chars characters of free text).
  :again            regenerate with the same start        :line K    rewrite line K only
  :pick             choose the next characters yourself   :undo      back to the previous poem
  :check            pinyin, 平仄 and rhyme of the poem      :save FILE append the poem to FILE
  :history          poems of this session                 :help  :quit (or Ctrl-D)
In :pick, type a number or a character, Enter for the first choice, :done to let the model
finish, :undo to take a character back, :cancel to leave."""


def settings_help() -> str:
    """One line per setting, from the settings table: `:temp VALUE   help`."""
    rows = ["Settings (shown in the status line; a command without a value shows the current one):"]
    for option in GenerationSettings.options("repl").values():
        rows.append(f"  :{option.name:<12} {option.help}")
    return "\n".join(rows)


class Session:
    """The REPL's state and commands; `handle` takes one input line and returns False to quit."""

    def __init__(self, model, vocab, console: Console, settings: GenerationSettings | None = None,
                 read_line: Callable[[str], str] | None = None):
        self.model, self.vocab, self.console = model, vocab, console
        self.settings = settings or GenerationSettings(form="七绝")
        self.poem: str | None = None
        self.previous: list[str | None] = []  # for :undo
        self.history: list[str] = []
        self.last_prime = ""
        self.generation = 0
        self.read_line = read_line or (lambda prompt: input(prompt))

    # -- output ---------------------------------------------------------------------------
    def say(self, text: str, style: str = "") -> None:
        self.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))

    def error(self, text: str) -> None:
        self.say(f"error: {text}", "red")

    # -- generation -----------------------------------------------------------------------
    def _next_settings(self, **changes) -> GenerationSettings:
        """The settings of the next generation: seeds advance so :again gives a new poem."""
        seed = self.settings.seed
        self.generation += 1
        if seed is not None:
            changes["seed"] = seed + self.generation - 1
        return self.settings.replace(**changes)

    def compose(self, prime: str) -> None:
        from poetgen.write import write

        written = write(self.model, self.vocab, self._next_settings(), prime=prime, side="repl")
        self.last_prime = prime
        texts = [w.text for w in written]
        self._set_poem(texts[0])
        self.history.extend(texts)
        for i, text in enumerate(texts):
            self.say(text if len(texts) == 1 else f"{i + 1}. {text}", "bold")

    def _set_poem(self, text: str) -> None:
        self.previous.append(self.poem)
        self.poem = text

    def regenerate_line(self, arg: str) -> None:
        from poetgen.verse.prosody import split_verse
        from poetgen.write import write

        if not self.poem or not self.settings.form:
            raise ConfigError(":line needs a poem written with a :form")
        lines = split_verse(self.poem)
        try:
            k = int(arg)
        except ValueError:
            raise ConfigError(f":line needs a line number, 1 to {len(lines)}") from None
        if not 1 <= k <= len(lines):
            raise ConfigError(f":line needs a line number, 1 to {len(lines)}")
        pattern = "/".join("?" * len(x) if i == k - 1 else x for i, x in enumerate(lines))
        # The kept lines already carry their heads, and one poem replaces the one shown.
        settings = self._next_settings(pattern=pattern, acrostic="", n=1, beam=0)
        poem = write(self.model, self.vocab, settings, prime="", side="repl")[0]
        self._set_poem(poem.text)
        self.history.append(poem.text)
        self.say(poem.text, "bold")

    def pick(self) -> None:
        from poetgen.verse.constrain import Stepper, compile_spec

        s = self.settings
        spec = s.validate("repl").poem_spec(prime="")
        compiled = compile_spec(spec, self.vocab) if spec else None
        stepper = Stepper(self.model, self.vocab, compiled)
        while not stepper.done:
            choices = stepper.choices(9, s.temperature)
            self.say(f"{stepper.text}▌")
            self.say("  ".join(f"{i + 1}:{c if c != chr(10) else '⏎'} {p:.0%}"
                               for i, (c, p) in enumerate(choices)), "cyan")
            try:
                answer = self.read_line("pick> ").strip()
            except EOFError:
                return
            if answer in (":cancel", ":quit"):
                self.say("pick cancelled")
                return
            if answer == ":done":
                stepper.finish(s.temperature, self._next_settings().seed)
                break
            if answer == ":undo":
                if not stepper.undo():
                    self.say("nothing to undo")
                continue
            if answer == "":
                ch = choices[0][0]
            elif answer.isdigit() and 1 <= int(answer) <= len(choices):
                ch = choices[int(answer) - 1][0]
            elif len(answer) == 1:
                ch = answer
            else:
                self.error(f"type 1-{len(choices)}, one character, :done, :undo or :cancel")
                continue
            try:
                stepper.push(ch)
            except PoetgenError as e:
                self.error(str(e))
        self._set_poem(stepper.text)
        self.history.append(stepper.text)
        self.say(stepper.text, "bold")

    # -- other commands -------------------------------------------------------------------
    def check(self) -> None:
        from poetgen.verse.check import check_poem
        from poetgen.app.render import render_report

        if not self.poem:
            raise ConfigError("no poem yet: type a start, or :again")
        self.console.print(render_report(check_poem(self.poem, rhyme=self.settings.rhyme if self.settings.rhyme != "off" else "pingshui",
                                                    tones=self.settings.tones)))

    def save(self, arg: str) -> None:
        if not self.poem:
            raise ConfigError("no poem to save yet")
        if not arg:
            raise ConfigError(":save needs a file name")
        path = Path(arg).expanduser()
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(path, old + (self.poem + "\n").encode("utf-8"))
        self.say(f"saved to {path}")

    def change_setting(self, field_name: str, arg: str) -> None:
        """`:NAME VALUE` sets a setting (checked as the CLI checks it); `:NAME` shows it."""
        option = GenerationSettings.options()[field_name]
        if not arg:
            value = getattr(self.settings, field_name)
            self.say(f":{option.name} is {_shown(value)}")
            return
        value = GenerationSettings.parse(field_name, arg, "repl")
        candidate = self.settings.replace(**{field_name: value}).validate("repl")
        self.settings = candidate
        self.say(self.settings.summary(), "dim")

    def handle(self, line: str) -> bool:
        line = line.strip()
        if not line:
            return True
        if not line.startswith((":", "：")):
            self.compose(line)
            return True
        name, _, arg = line[1:].partition(" ")
        name, arg = name.strip().lower(), arg.strip()
        if name in ("quit", "q", "exit"):
            return False
        if name == "help":
            self.say(COMMANDS_HELP)
            self.say(settings_help())
        elif name == "again":
            self.compose(self.last_prime)
        elif name == "line":
            self.regenerate_line(arg)
        elif name == "pick":
            self.pick()
        elif name == "undo":
            if not self.previous:
                raise ConfigError("nothing to undo")
            self.poem = self.previous.pop()
            self.say(self.poem or "(no poem)", "bold")
        elif name == "check":
            self.check()
        elif name == "save":
            self.save(arg)
        elif name == "history":
            for i, text in enumerate(self.history, 1):
                self.say(f"{i}. {text}")
            if not self.history:
                self.say("(no poems yet)")
        elif GenerationSettings.field_for(name, "repl"):
            self.change_setting(GenerationSettings.field_for(name, "repl"), arg)
        else:
            raise ConfigError(f"unknown command :{name}; type :help for the list")
        return True


def _shown(value) -> str:
    if value is None or value == "":
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def history_file() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "poetgen" / "history"


def run(model, vocab, console: Console, stdin: TextIO | None = None,
        settings: GenerationSettings | None = None) -> int:
    """The loop: returns the exit code (0 on :quit or Ctrl-D)."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        _setup_readline()
        prompt = "poetgen> "
        read_line = input
    else:
        prompt = ""

        def read_line(p: str) -> str:
            line = stdin.readline()
            if not line:
                raise EOFError
            return line.rstrip("\n")

    session = Session(model, vocab, console, settings, read_line)
    if interactive:
        console.print("poetgen REPL: type the start of a poem, or :help. Ctrl-D to quit.", style="dim")
    session.say(session.settings.summary(), "dim")
    pending, ended = [], False  # lines (and a Ctrl-D) typed ahead while a poem was generated
    while True:
        try:
            if interactive and "readline" in sys.modules and not pending and not ended:
                typed = typed_ahead(stdin)
                pending, ended = typed.lines, typed.ended
                _remember(pending, typed.unfinished)
            if pending:
                line = pending.pop(0)
            elif ended:
                raise EOFError
            else:
                line = read_line(prompt)
        except EOFError:
            if interactive:
                console.print()
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as a shell does
            console.print()
            continue
        try:
            if not session.handle(line):
                return 0
        except KeyboardInterrupt:
            console.print("cancelled", style="yellow")
        except PoetgenError as e:
            session.error(str(e))


@dataclass
class TypedAhead:
    lines: list[str]  # complete lines, to run in order
    unfinished: str = ""  # text typed without Enter, put back at the next prompt
    ended: bool = False  # Ctrl-D at the start of a line: quit after the lines


def typed_ahead(stdin: TextIO) -> TypedAhead:
    """What was typed while the REPL was busy generating, taken before readline starts.

    Readline switches the terminal between raw mode (at the prompt) and canonical mode (while a
    poem is generated). A Ctrl-D pressed in canonical mode is an end-of-file mark that Linux drops
    at that switch (bash's prompt loses it the same way), so Ctrl-C then Ctrl-D would not quit.
    Keys that arrive while in raw mode come through as they are: Enter as \r, Ctrl-D as \x04.
    """
    if os.name != "posix":
        return TypedAhead([])
    fd, chunks = stdin.fileno(), []
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 4096)
        if not data:  # the end-of-file mark of a Ctrl-D in canonical mode
            chunks.append(b"\x04")
            break
        chunks.append(data)
    return parse_typed(b"".join(chunks).decode("utf-8", errors="replace"))


def parse_typed(text: str) -> TypedAhead:
    """Split typed keys into lines; a Ctrl-D on an empty line ends the input, as at a prompt."""
    lines, current = [], ""
    for piece in re.split(r"(\r\n|\r|\n|\x04)", text):
        if piece in ("\r\n", "\r", "\n"):
            lines.append(current)
            current = ""
        elif piece == "\x04":
            if not current:
                return TypedAhead(lines, "", ended=True)
        else:
            current += piece
    return TypedAhead(lines, current)


def _remember(lines: list[str], unfinished: str) -> None:
    """Typed-ahead lines go into the history; an unfinished one comes back at the prompt."""
    readline = sys.modules["readline"]
    for line in lines:
        readline.add_history(line)
    if unfinished:
        def put_back():
            readline.insert_text(unfinished)
            readline.redisplay()
            readline.set_pre_input_hook(None)

        readline.set_pre_input_hook(put_back)


def _setup_readline() -> None:
    try:
        import atexit
        import readline
    except ImportError:  # e.g. Windows without pyreadline: no history, still works
        return
    path = history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        return
    readline.set_history_length(1000)
    atexit.register(lambda: _save_history(readline, path))


def _save_history(readline, path: Path) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass


__all__ = ["Session", "run", "history_file", "typed_ahead", "parse_typed"]

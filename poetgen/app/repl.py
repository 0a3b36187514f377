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

HELP = """\
Type text to start a poem (or with :mode free, a prime for :max characters of free text).
  :again            regenerate with the same start        :line K    rewrite line K only
  :pick             choose the next characters yourself   :undo      back to the previous poem
  :check            pinyin, 平仄 and rhyme of the poem      :save FILE append the poem to FILE
  :history          poems of this session                 :help  :quit (or Ctrl-D)
Settings (shown in the status line):
  :temp 0.7  :top-k 20  :top-p 0.9  :n 3  :seed 42|off  :beam 8|0  :mode poem|free  :max 400
  :form 七绝|off  :rhyme pingshui|modern|off  :group 下平十一尤|off  :tones loose|strict|off
  :acrostic 春江花月|off
In :pick, type a number or a character, Enter for the first choice, :done to let the model
finish, :undo to take a character back, :cancel to leave."""


@dataclass
class Settings:
    temp: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    form: str | None = "七绝"
    rhyme: str | None = "pingshui"
    group: str | None = None
    tones: str = "loose"
    acrostic: str = ""
    n: int = 1
    seed: int | None = None
    beam: int = 0
    mode: str = "poem"
    max: int = 400  # length limit of free text

    def status(self) -> str:
        if self.mode == "free":
            shape = f"free text up to {self.max} characters"
        else:
            shape = f"form {self.form or 'any'} · rhyme {self.rhyme or 'off'}" + \
                (f" {self.group}" if self.group else "") + f" · tones {self.tones}" + \
                (f" · acrostic {self.acrostic}" if self.acrostic else "")
        extra = f" · beam {self.beam}" if self.beam else ""
        return (f"[{shape} · temp {self.temp} · top-k {self.top_k or 'off'} · top-p {self.top_p} · "
                f"n {self.n} · seed {self.seed if self.seed is not None else 'random'}{extra}]")


def _parse_setting(name: str, value: str, current: Settings) -> dict:
    """':name value' -> {field: parsed}; raises ConfigError with the allowed values."""
    from poetgen.verse.prosody import get_form

    off = value.lower() in ("off", "none", "")
    try:
        if name == "temp":
            v = float(value)
            if not v > 0:
                raise ValueError
            return {"temp": v}
        if name in ("top-k", "n", "beam", "max"):
            v = int(value)
            if v < (1 if name in ("n", "max") else 0) or (name == "n" and v > 100):
                raise ValueError
            return {name.replace("-", "_"): v}
        if name == "top-p":
            v = float(value)
            if not 0 < v <= 1:
                raise ValueError
            return {"top_p": v}
        if name == "seed":
            return {"seed": None if off else int(value)}
    except ValueError:
        allowed = {"temp": "a number > 0", "top-k": "an integer >= 0 (0 = off)", "n": "1 to 100",
                   "beam": "an integer >= 0 (0 = off)", "top-p": "a number in (0, 1]",
                   "max": "an integer >= 1",
                   "seed": "an integer or off"}[name]
        raise ConfigError(f":{name} needs {allowed}, not {value!r}") from None
    if name == "form":
        return {"form": None if off else get_form(value).name}
    if name == "rhyme":
        if value not in ("pingshui", "modern", "off"):
            raise ConfigError(f":rhyme needs pingshui, modern or off, not {value!r}")
        return {"rhyme": None if off else value}
    if name == "group":
        return {"group": None if off else value}
    if name == "tones":
        if value not in ("loose", "strict", "off"):
            raise ConfigError(f":tones needs loose, strict or off, not {value!r}")
        return {"tones": value}
    if name == "acrostic":
        return {"acrostic": "" if off else value}
    if name == "mode":
        if value not in ("poem", "free"):
            raise ConfigError(f":mode needs poem or free, not {value!r}")
        return {"mode": value}
    raise ConfigError(f"unknown command :{name}; type :help for the list")


SETTINGS = {"temp", "top-k", "top-p", "form", "rhyme", "group", "tones", "acrostic", "n", "seed",
            "beam", "mode", "max"}


class Session:
    """The REPL's state and commands; `handle` takes one input line and returns False to quit."""

    def __init__(self, model, vocab, console: Console, settings: Settings | None = None,
                 read_line: Callable[[str], str] | None = None):
        self.model, self.vocab, self.console = model, vocab, console
        self.settings = settings or Settings()
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
    def _seed(self) -> int | None:
        s = self.settings.seed
        self.generation += 1
        return None if s is None else s + self.generation - 1

    def _spec(self, prime: str = "", pattern: str = ""):
        from poetgen.verse.constrain import PoemSpec

        s = self.settings
        return PoemSpec.make(s.form, rhyme=s.rhyme, rhyme_group=s.group, tones=s.tones,
                             acrostic=s.acrostic, pattern=pattern, prime=prime)

    def compose(self, prime: str) -> None:
        from poetgen.verse.constrain import compile_spec, generate_poems
        from poetgen.lm.sample import generate

        s = self.settings
        unknown = self.vocab.unknown(prime)
        if unknown:
            raise ConfigError(f"the model never saw {' '.join(unknown)}; remove or replace them")
        self.last_prime = prime
        if s.mode == "free" or not s.form:
            texts = [x.text for x in generate(self.model, self.vocab, n=s.n, temperature=s.temp,
                                              top_k=s.top_k, top_p=s.top_p, prime=prime,
                                              seed=self._seed(), max_chars=s.max,
                                              stop_at_newline=s.mode == "poem")]
        else:
            compiled = compile_spec(self._spec(prime=prime), self.vocab)
            poems = generate_poems(self.model, compiled, n=s.n, temperature=s.temp, top_k=s.top_k,
                                   top_p=s.top_p, seed=self._seed(), beam=s.beam)
            texts = [p.text for p in poems]
        self._set_poem(texts[0])
        self.history.extend(texts)
        for i, text in enumerate(texts):
            self.say(text if len(texts) == 1 else f"{i + 1}. {text}", "bold")

    def _set_poem(self, text: str) -> None:
        self.previous.append(self.poem)
        self.poem = text

    def regenerate_line(self, arg: str) -> None:
        from poetgen.verse.constrain import compile_spec, generate_poems
        from poetgen.verse.prosody import split_verse

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
        spec = self._spec(pattern=pattern)
        spec.acrostic = ""  # the kept lines already carry their heads
        compiled = compile_spec(spec, self.vocab)
        s = self.settings
        poem = generate_poems(self.model, compiled, n=1, temperature=s.temp, top_k=s.top_k,
                              top_p=s.top_p, seed=self._seed())[0]
        self._set_poem(poem.text)
        self.history.append(poem.text)
        self.say(poem.text, "bold")

    def pick(self) -> None:
        from poetgen.verse.constrain import Stepper, compile_spec

        s = self.settings
        compiled = compile_spec(self._spec(), self.vocab) if s.mode == "poem" and s.form else None
        stepper = Stepper(self.model, self.vocab, compiled)
        while not stepper.done:
            choices = stepper.choices(9, s.temp)
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
                stepper.finish(s.temp, self._seed())
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
        self.console.print(render_report(check_poem(self.poem, rhyme=self.settings.rhyme or "pingshui",
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
            self.say(HELP)
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
        elif name in SETTINGS:
            if not arg:
                raise ConfigError(f":{name} needs a value; type :help")
            changes = _parse_setting(name, arg, self.settings)
            for k, v in changes.items():
                setattr(self.settings, k, v)
            self.say(self.settings.status(), "dim")
        else:
            raise ConfigError(f"unknown command :{name}; type :help for the list")
        return True


def history_file() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "poetgen" / "history"


def run(model, vocab, console: Console, stdin: TextIO | None = None,
        settings: Settings | None = None) -> int:
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
    session.say(session.settings.status(), "dim")
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


__all__ = ["Session", "Settings", "run", "history_file", "typed_ahead", "parse_typed"]

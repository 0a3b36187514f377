"""Interactive REPL: write poems together with the model.

Type text to start a poem (the model completes it under the current settings), or a :command.
Three parts, each replaceable without the others:

    Session     the state (settings, the poems shown, the poems of the session) and the commands,
                a table name -> handler + help; it talks to the user only through a front end
    ScriptUI    stdin is not a terminal: commands read line by line, output plain text, errors
                on stderr, exit status 1 if any command failed (so sessions can be scripted)
    TerminalUI  a terminal (poetgen.app.terminal, on prompt_toolkit): line editing, Tab
                completion, a status bar, history, keys typed during a generation held back

Commands act on the poem shown (`#N` picks one of several shown); in a terminal, every poem the
session writes is also written (atomically, as it is made) to a session file named at start, so
no error, crash or closed window loses one. Scripted sessions print every poem on stdout.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from poetgen.app.render import printable
from poetgen.errors import ConfigError, FileSystemError, PoetgenError
from poetgen.settings import SEED_LIMIT, GenerationSettings

if TYPE_CHECKING:
    from poetgen.verse.lexicon import Lexicon

KEYS_HELP = ("Tab completes a :command and its values · Up/Down and Ctrl-R search what you typed "
             "before · Ctrl-L clears the screen · Ctrl-C stops a poem being written · Ctrl-D "
             "quits. Keys typed while a poem is written come back at the next prompt, to edit.")
PICK_HINT = ("Pick the next character: its number, Enter for 1, or type characters yourself; "
             ":undo takes one back, :done lets the model finish, :cancel (or Ctrl-C) leaves.")


# ----------------------------------------------------------------------------------------------
# Poems and front ends


class EndSession(BaseException):
    """Ctrl-D pressed while a poem was being written: stop it and end the session."""


@dataclass(frozen=True)
class SessionPoem:
    """A poem of the session and the settings it was written with (its form, rhyme and tones)."""

    text: str
    settings: GenerationSettings


class UI(Protocol):
    """What the session needs from a front end."""

    has_status_bar: bool  # the settings are always on screen (else printed when they change)
    quit_requested: bool  # Ctrl-D was pressed while no prompt was shown: end after this command

    def read(self) -> str: ...  # the main prompt's next line; EOFError at the end (Ctrl-D)
    def say(self, text: str, style: str = "") -> None: ...
    def show(self, renderable: RenderableType) -> None: ...
    def poems(self, texts: list[str], all_numbered: bool = False) -> None: ...
    def error(self, text: str) -> None: ...
    def ask(self, prompt: str) -> str: ...  # a sub-prompt (:pick); EOFError/KeyboardInterrupt leave
    def busy(self): ...  # context manager around work that may take long (Ctrl-C cancels it)


# ----------------------------------------------------------------------------------------------
# The command table


@dataclass(frozen=True)
class Command:
    """One :command: how it is typed, what it does, and what Tab offers after it."""

    name: str
    usage: str  # arguments, as shown in :help
    help: str
    run: Callable[["Session", str], None]
    values: Callable[["Session"], list[str]] | str | None = None  # Tab values, or "path"
    aliases: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {}  # the session commands; settings are added after Session


def command(name: str, usage: str, help: str, values=None, aliases: tuple[str, ...] = ()):
    """Register a Session method as the :command `name`."""
    def register(method):
        COMMANDS[name] = Command(name, usage, help, method, values, aliases)
        return method
    return register


def _line_numbers(session: "Session") -> list[str]:
    from poetgen.verse.prosody import split_verse

    return [str(k) for k in range(1, len(split_verse(session.current.text)) + 1)] \
        if session.current else []


def _poem_refs(session: "Session") -> list[str]:
    return [f"#{k}" for k in range(1, len(session.shown) + 1)]


class Session:
    """The REPL's state and commands; `handle` takes one input line."""

    def __init__(self, model, vocab, ui: UI, settings: GenerationSettings | None = None,
                 session_file: Path | None = None,
                 load_lexicon: Callable[[], Lexicon] | None = None):
        self.model, self.vocab, self.ui = model, vocab, ui
        self._load_lexicon = load_lexicon
        self.settings = (settings or GenerationSettings(form="七绝")).validate("repl")
        self.poems: list[SessionPoem] = []  # every poem of the session, in order
        self.shown: list[SessionPoem] = []  # the poems on screen, numbered #1.. (a batch, :history)
        self.current: SessionPoem | None = None  # the poem :line, :check and :save act on
        self.previous: list[tuple[list[SessionPoem], SessionPoem | None]] = []  # for :undo
        self.last_prime = ""
        self.generation = 0
        self.session_file = session_file
        self.running = True

    @property
    def lexicon(self) -> Lexicon | None:
        """The corpus statistics themes and ranking use, loaded when a poem first needs them, as
        `sample` loads them (None: write's default, the bundled Tang lexicon). The loader keeps
        what it loaded (verse.lexicon caches each file), so asking again costs a stat."""
        return self._load_lexicon() if self._load_lexicon is not None else None

    # -- input ----------------------------------------------------------------------------------
    def handle(self, line: str) -> None:
        """Run one line: a poem's start, or a :command (errors are raised as PoetgenError)."""
        # A pasted poem may span lines: after verse punctuation they join as written, else with
        # a space (where split_verse ends a line). A script saved with a BOM starts with one.
        line = re.sub(r"(?<=[，。？！；])\s*\n\s*", "", line.lstrip("\ufeff"))
        line = " ".join(part.strip() for part in line.split("\n")).strip()
        if not line:
            return
        if not line.startswith((":", "：")):
            self.compose(line)
            return
        name, *arg = line[1:].split(None, 1) or [""]  # any space: 　 (U+3000) from an IME
        found = lookup(name)
        if found is None:
            raise ConfigError(f"unknown command :{name}; type :help for the list")
        found.run(self, arg[0].strip() if arg else "")

    def completions(self, text: str) -> tuple[str, list[str] | None]:
        """What Tab offers for `text` typed so far: (the word being completed, its completions);
        None for completions means: a file path."""
        if not text.startswith((":", "：")):
            return "", []
        name, space, arg = text[1:].partition(" ")
        if not space:
            return text, [f":{c.name} " if c.usage else f":{c.name}" for c in COMMANDS.values()
                          if c.name.startswith(name.lower())]
        found = lookup(name)
        if found is None or found.values is None:
            return arg, []
        if found.values == "path":
            return arg, None
        return arg, [v for v in found.values(self) if v.startswith(arg) and v != arg]

    # -- writing --------------------------------------------------------------------------------
    def _next_settings(self, **changes) -> GenerationSettings:
        """The settings of the next generation: a seed advances so :again gives a new poem."""
        self.generation += 1
        if self.settings.seed is not None:
            changes["seed"] = (self.settings.seed + self.generation - 1) % (SEED_LIMIT + 1)
        return self.settings.replace(**changes)

    def compose(self, prime: str) -> None:
        from poetgen.write import write

        settings = self._next_settings()
        with self.ui.busy():
            written = write(self.model, self.vocab, settings, prime=prime, side="repl",
                            lexicon=self.lexicon if settings.writes_poem else None)
        self.last_prime = prime
        self._present([SessionPoem(w.text, settings) for w in written])
        for w in written:  # where a :theme or :keywords put its words
            if getattr(w, "plan", None):
                from poetgen.verse.plan import describe_plan

                self.ui.say(describe_plan(w.plan), "dim")

    def _present(self, poems: list[SessionPoem]) -> None:
        """New poems become the ones shown (and the first the current one), kept in the session."""
        self.previous.append((self.shown, self.current))
        self.shown, self.current = poems, poems[0]
        self.poems.extend(poems)
        self._write_session_file()
        self.ui.poems([p.text for p in poems])

    def _write_session_file(self) -> None:
        from poetgen.files import atomic_write_bytes

        if self.session_file is None:
            return
        try:
            text = "".join(p.text + "\n" for p in self.poems)
            atomic_write_bytes(self.session_file, text.encode("utf-8"))
        except FileSystemError as e:  # files.atomic_open's one line for any OSError
            self.ui.say(f"warning: cannot write the session file ({e}); keep poems with :save",
                        "yellow")
            self.session_file = None

    def _poem(self, arg: str) -> tuple[str, SessionPoem]:
        """Split '#N' off a command's argument: (the rest, poem #N of those shown, else the
        current poem)."""
        match = re.fullmatch(r"#(\d+)\s*(.*)", arg) or re.fullmatch(r"(?:(.*?)\s+)?#(\d+)", arg)
        if match is None:
            if self.current is None:
                raise ConfigError("no poem yet: type the start of one (or :again)")
            return arg, self.current
        number, rest = (match[1], match[2]) if arg.startswith("#") else (match[2], match[1] or "")
        k = int(number)
        if not 1 <= k <= len(self.shown):
            shown = f"#1 to #{len(self.shown)}" if self.shown else "none yet"
            raise ConfigError(f"there is no poem #{k}; the poems shown are {shown}")
        return rest.strip(), self.shown[k - 1]

    # -- the commands ---------------------------------------------------------------------------
    @command("again", "", "Write another poem from the same start.")
    def again(self, arg: str) -> None:
        self.compose(self.last_prime)

    @command("line", "K [#N]", "Rewrite line K of the poem (or of poem #N), keeping its form, "
             "rhyme and tones.", values=_line_numbers)
    def rewrite_line(self, arg: str) -> None:
        from poetgen.verse.check import detect_form
        from poetgen.verse.prosody import han_only, split_verse
        from poetgen.write import write

        rest, poem = self._poem(arg)
        lines = split_verse(poem.text)
        own = poem.settings
        if not own.writes_poem:  # free text that happens to have a regular shape
            form = detect_form(lines)
            if form is None:
                raise ConfigError(":line needs a poem of a regular form (4 or 8 lines of 5 or 7 "
                                  "characters)")
            # Its form, in today's rhyme scheme and tones; none of today's other constraints
            # (an acrostic set since was never this text's).
            unset = {name: GenerationSettings.default(name) for name in own.POEM_CONSTRAINTS
                     if name not in ("rhyme", "tones", "readings")}
            own = self.settings.replace(**{**unset, "form": form.name, "mode": "poem"})
        try:
            k = int(rest)
        except ValueError:
            k = 0
        if not 1 <= k <= len(lines):
            raise ConfigError(f":line needs a line number, 1 to {len(lines)}, e.g. :line 3")
        heads = han_only(own.acrostic)
        head = heads[k - 1] if k <= len(heads) else "?"
        pattern = "/".join(head + "?" * (len(x) - 1) if i == k - 1 else x
                           for i, x in enumerate(lines))
        # The poem's own constraints (not today's settings); sampling knobs are today's. No
        # theme or keywords: the other lines carry the subject, and a keyword plan would have to
        # put every keyword into the one line left free.
        constraints = {name: getattr(own, name) for name in own.POEM_CONSTRAINTS}
        settings = self._next_settings(**{**constraints, "pattern": pattern, "acrostic": "",
                                          "prime": ""}, mode="poem", n=1, beam=0, theme="",
                                       keywords="")
        with self.ui.busy():
            written = write(self.model, self.vocab, settings, prime="", side="repl",
                            lexicon=self.lexicon)[0]
        self._present([SessionPoem(written.text, settings.replace(pattern="",
                                                                  acrostic=own.acrostic))])

    @command("pick", "", "Choose each next character yourself from the model's top choices.")
    def pick(self, arg: str) -> None:
        from poetgen.verse.constrain import Stepper, compile_spec

        settings = self._next_settings()
        spec = settings.validate("repl").poem_spec(prime="")
        compiled = compile_spec(spec, self.vocab) if spec else None
        stepper = Stepper(self.model, self.vocab, compiled, max_chars=settings.max_chars)
        self.ui.say(PICK_HINT, "dim")
        while not stepper.done:
            choices = stepper.choices(9, settings.temperature)
            self.ui.say(f"{stepper.text}▌")
            self.ui.say("  ".join(f"{i}:{c if c != chr(10) else '⏎'} {p:.0%}"
                                  for i, (c, p) in enumerate(choices, 1)), "cyan")
            try:
                answer = self.ui.ask("pick> ")
            except (EOFError, KeyboardInterrupt):
                answer = ":cancel"
            step = read_pick_answer(answer, [c for c, _ in choices])
            if step.action == "cancel":
                self.ui.say("pick cancelled")
                return
            if step.action == "done":
                with self.ui.busy():
                    stepper.finish(settings.temperature, settings.seed)
            elif step.action == "undo" and not stepper.undo():
                self.ui.say("nothing to undo")
            elif step.action == "error":
                self.ui.error(step.message)
            for ch in step.chars:
                try:
                    stepper.push(ch)
                except PoetgenError as e:
                    self.ui.error(str(e))
                    break
        self._present([SessionPoem(stepper.text, settings)])

    @command("select", "N", "Make poem #N of those shown the one :line, :check and :save act on.",
             values=lambda s: [str(k) for k in range(1, len(s.shown) + 1)])
    def select(self, arg: str) -> None:
        if not re.fullmatch(r"#?\d+", arg):
            raise ConfigError(f":select needs a poem number, e.g. :select 2, not {arg!r}")
        _, poem = self._poem(arg if arg.startswith("#") else f"#{arg}")
        self.current = poem
        self.ui.poems([poem.text])

    @command("undo", "", "Back to the poems shown before the last one was written.")
    def undo(self, arg: str) -> None:
        if not self.previous:
            raise ConfigError("nothing to undo")
        self.shown, self.current = self.previous.pop()
        self.ui.poems([p.text for p in self.shown] or ["(no poem)"])

    @command("check", "[#N | POEM]", "Pinyin, 平仄 and rhyme of the poem, of poem #N, or of a "
             "poem you paste.", values=_poem_refs)
    def check(self, arg: str) -> None:
        from poetgen.app.render import render_report
        from poetgen.verse.check import check_poem

        if arg and not re.fullmatch(r"#?\d+", arg):  # a pasted poem: judged as `check` does
            text, own, readings = arg, self.settings, "all"
        else:  # a poem of the session: by the readings it was written under
            _, poem = self._poem(f"#{arg.lstrip('#')}" if arg else "")
            text, own, readings = poem.text, poem.settings, poem.settings.readings
        rhyme = own.rhyme if own.rhyme != "off" else "pingshui"
        self.ui.show(render_report(check_poem(text, rhyme=rhyme, tones=own.tones,
                                              readings=readings)))

    @command("save", "FILE [#N]", "Append the poem (or poem #N) to FILE.", values="path")
    def save(self, arg: str) -> None:
        from poetgen.files import atomic_write_bytes

        name, poem = self._poem(arg)
        if not name:
            raise ConfigError(":save needs a file name, e.g. :save poems.txt")
        path = Path(name).expanduser()
        try:
            if path.is_dir():
                raise ConfigError(f":save needs a file name; {name} is a folder (e.g. :save "
                                  f"{path / 'poems.txt'})")
            if not path.parent.exists():
                raise ConfigError(f"no folder {path.parent}: create it first, or save elsewhere")
            if not path.parent.is_dir():
                raise ConfigError(f"{path.parent} is a file, not a folder; give another path")
            existed = path.exists()
            if existed and not path.is_file():  # a FIFO would block the read for good
                raise ConfigError(f"{name} is not a regular file; give a file to append to")
            old = path.read_bytes() if existed else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            atomic_write_bytes(path, old + (poem.text + "\n").encode("utf-8"))
        except (OSError, ValueError, FileSystemError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise ConfigError(f"cannot save to {name}: {reason}") from None
        self.ui.say(f"{'appended to' if existed else 'saved to'} {path}")

    @command("history", "", "Every poem of this session, numbered (#N then refers to them).")
    def history(self, arg: str) -> None:
        if not self.poems:
            self.ui.say("(no poems yet)")
            return
        self.shown = list(self.poems)
        self.ui.poems([p.text for p in self.poems], all_numbered=True)
        if self.session_file:
            self.ui.say(f"(kept in {self.session_file})", "dim")

    @command("help", "", "This list.")
    def help(self, arg: str) -> None:
        self.ui.show(help_table())

    @command("quit", "", "End the session (or Ctrl-D).", aliases=("q", "exit"))
    def quit(self, arg: str) -> None:
        self.running = False

    # -- settings -------------------------------------------------------------------------------
    def change_setting(self, name: str, arg: str) -> None:
        """`:NAME VALUE` sets a setting, checked as the CLI checks it; `:NAME` shows it."""
        option = GenerationSettings.options()[name]
        if not arg:
            self.ui.say(f":{option.name} is {_shown(getattr(self.settings, name))}")
            return
        changed = self.settings.replace(**{name: GenerationSettings.parse(name, arg, "repl")})
        note = ""
        try:
            changed.validate("repl")
        except ConfigError as conflict:
            changed, note = self._clear_older(changed, name, conflict)
        if option.poem_only or name in ("form", "mode"):
            self._refuse_impossible(changed)
        self.settings = changed
        if note:
            self.ui.say(note, "yellow")
        if not self.ui.has_status_bar:
            self.ui.say(self.settings.summary(), "dim")

    # Settings that only make sense with the form and rhyme scheme they were given for: a new
    # form or scheme clears them when they no longer fit (any other conflict refuses the change).
    DEPENDENT = ("acrostic", "rhyme_group")

    def _clear_older(self, changed: GenerationSettings, name: str,
                     conflict: ConfigError) -> tuple[GenerationSettings, str]:
        for older in self.DEPENDENT:
            if older == name or getattr(changed, older) == GenerationSettings.default(older):
                continue
            cleared = changed.replace(**{older: GenerationSettings.default(older)})
            try:
                cleared.validate("repl")
            except ConfigError:
                continue
            public = GenerationSettings.options()[older].public("repl")
            return cleared, f"{public} {getattr(changed, older)} cleared: {conflict}"
        raise conflict

    def _refuse_impossible(self, settings: GenerationSettings) -> None:
        """Constraints that no poem can meet with this model (a head the model never saw, a
        banned head) are refused when set, by the decoder's own check, not at the next poem."""
        from poetgen.verse.constrain import compile_spec

        if settings.writes_poem and self.vocab is not None:
            try:
                compile_spec(settings.poem_spec(prime=""), self.vocab)
            except PoetgenError as e:
                raise type(e)(GenerationSettings.named_for(str(e), "repl")) from None


def _shown(value) -> str:
    if value is None or value == "":
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _setting_values(option) -> list[str]:
    """What Tab offers after a setting: its choices, on/off, and 'off' where it is accepted."""
    values = list(option.choices) + (["on", "off"] if option.flag else [])
    try:
        option.parse("off")
        values.append("off")
    except (ValueError, TypeError):
        pass
    return list(dict.fromkeys(values))


def _add_setting_commands() -> None:
    """Every setting the REPL offers is a :command too, named, parsed and checked by its table."""
    for name, option in GenerationSettings.options("repl").items():
        COMMANDS[option.name] = Command(
            option.name, option.metavar or "VALUE", option.help,
            lambda session, arg, name=name: session.change_setting(name, arg),
            values=lambda session, option=option: _setting_values(option),
            aliases=option.aliases)


_add_setting_commands()


def lookup(name: str) -> Command | None:
    """The command typed as `name` (or one of its older spellings)."""
    name = name.lower()
    return COMMANDS.get(name) or next(
        (c for c in COMMANDS.values() if name in c.aliases), None)


def help_table() -> Group:
    """:help: every command and setting from the table, in columns that wrap by words."""
    settings = {o.name for o in GenerationSettings.options("repl").values()}
    rows = [(f":{c.name} {c.usage}".rstrip(), c.help) for c in COMMANDS.values()]
    width = max(cell_len(name) for name, _ in rows)

    def table(rows) -> Table:
        grid = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
        grid.add_column(no_wrap=True, style="bold", min_width=width)
        grid.add_column(overflow="fold")
        for name, text in rows:
            grid.add_row(Text(name), Text(text))
        return grid

    commands = [r for r, c in zip(rows, COMMANDS.values()) if c.name not in settings]
    knobs = [r for r, c in zip(rows, COMMANDS.values()) if c.name in settings]
    return Group(
        Text("Type the start of a poem (with :mode free, a prime for free text). With several "
             "poems shown, #N names one of them.", style="dim"),
        table(commands),
        Text("Settings (shown in the status bar; a setting without a value shows it):",
             style="dim"),
        table(knobs),
        Text(KEYS_HELP, style="dim"))


# ----------------------------------------------------------------------------------------------
# :pick, what an answer means (the session does the I/O, the Stepper the decoding)


@dataclass(frozen=True)
class PickStep:
    action: str  # "push", "done", "undo", "cancel" or "error"
    chars: str = ""  # characters to push, in order
    message: str = ""


def read_pick_answer(answer: str, choices: list[str]) -> PickStep:
    """'' -> the first choice, '3' -> the third, 春风 -> those characters, :done/:undo/:cancel."""
    answer = answer.strip()
    digits = [unicodedata.digit(c, None) for c in answer]  # 3, ３ (full width), ③
    if answer and None not in digits:
        answer = "".join(map(str, digits))
    word = answer.lstrip(":：").lower() if answer.startswith((":", "：")) else None
    if word in ("done", "undo", "cancel"):
        return PickStep(word)
    if word in ("quit", "q"):
        return PickStep("cancel")
    if word is not None:
        return PickStep("error", message=f"in :pick, type 1-{len(choices)}, characters, :done, "
                                         ":undo or :cancel")
    if not answer:
        return PickStep("push", choices[0]) if choices else PickStep("done")
    if answer.isdecimal():
        if 1 <= int(answer) <= len(choices):
            return PickStep("push", choices[int(answer) - 1])
        return PickStep("error", message=f"pick a number from 1 to {len(choices)}")
    return PickStep("push", "".join(answer.split()))


# ----------------------------------------------------------------------------------------------
# Files: history and session poems


def data_dir() -> Path:
    """Where the history and the session files go; OSError if there is nowhere (no home)."""
    import errno
    import os

    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "poetgen"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no $HOME and a user the password database does not know
        raise OSError(errno.ENOENT, "no home folder; set XDG_DATA_HOME") from None
    return home / ".local" / "share" / "poetgen"


def history_file() -> Path:
    return data_dir() / "history"


def new_session_file(now: datetime | None = None) -> Path:
    """Create (empty) and return a file for this session's poems, named by the time it started.

    Creating it claims the name: a second session started in the same second gets `-2`.
    Raises OSError when the data directory cannot be written.
    """
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H%M%S")
    folder = data_dir() / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        path = folder / (f"{stamp}.txt" if k == 1 else f"{stamp}-{k}.txt")
        try:
            path.touch(exist_ok=False)
            return path
        except FileExistsError:
            k += 1


# ----------------------------------------------------------------------------------------------
# Scripted front end and the loop


class ScriptUI:
    """stdin is not a terminal: plain lines in, plain text out, errors on stderr."""

    has_status_bar = False
    quit_requested = False  # only a terminal's Ctrl-D between prompts sets it

    def __init__(self, stdin: TextIO, out: Console, err: Console):
        self.stdin, self.out, self.err = stdin, out, err
        self.failed = False  # any command failed: the exit status is 1

    def read(self) -> str:
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def ask(self, prompt: str) -> str:
        return self.read()

    def say(self, text: str, style: str = "") -> None:
        text = escape(printable(text))
        self.out.print(f"[{style}]{text}[/]" if style else text)

    def show(self, renderable: RenderableType) -> None:
        self.out.print(renderable, soft_wrap=False)  # tables and help wrap by words

    def poems(self, texts: list[str], all_numbered: bool = False) -> None:
        for i, text in enumerate(texts, 1):
            label = f"{i}. " if len(texts) > 1 or all_numbered else ""
            self.out.print(escape(label + text))

    def error(self, text: str) -> None:
        self.err.print(f"error: {escape(printable(text))}", style="red")
        self.failed = True

    @contextmanager
    def busy(self) -> Iterator[None]:
        yield


def run(model, vocab, console: Console, stdin: TextIO | None = None,
        settings: GenerationSettings | None = None, *, err_console: Console | None = None,
        debug: bool = False, load_lexicon: Callable[[], Lexicon] | None = None) -> int:
    """The REPL until :quit or Ctrl-D; returns the exit status (scripted: 1 if a command failed)."""
    stdin = stdin or sys.stdin
    if stdin.isatty() and console.is_terminal:
        from poetgen.app.terminal import TerminalUI

        try:
            session_file = new_session_file()
            kept = f"This session's poems are kept in {session_file}"
        except OSError as e:
            session_file, kept = None, (f"warning: no session file ({e.strerror or e}): keep "
                                        "poems with :save")
        try:
            history: Path | None = history_file()
        except OSError:  # the session file's warning says why; Up still recalls this session
            history = None
        with TerminalUI(console, stdin, history) as ui:
            session = Session(model, vocab, ui, settings, session_file, load_lexicon)
            ui.attach(session)
            ui.say("poetgen REPL: type the start of a poem, or :help. Tab completes, Ctrl-D "
                   "quits.", "dim")
            ui.say(kept, "dim")
            try:
                _loop(session, ui, debug)
            finally:
                if session.session_file and not session.poems:  # nothing written: no file
                    session.session_file.unlink(missing_ok=True)
        return 0
    ui = ScriptUI(stdin, console, err_console or Console(stderr=True, highlight=False,
                                                         emoji=False, soft_wrap=True))
    session = Session(model, vocab, ui, settings, load_lexicon=load_lexicon)
    ui.say(session.settings.summary(), "dim")
    try:
        _loop(session, ui, debug)
    except KeyboardInterrupt:
        ui.error("interrupted")
        return 130
    return 1 if ui.failed else 0


def _loop(session: Session, ui, debug: bool) -> None:
    """Read and run lines; only :quit or the end of input (Ctrl-D) ends it."""
    scripted = isinstance(ui, ScriptUI)
    while session.running and not ui.quit_requested:
        try:
            line = ui.read()
            try:
                session.handle(line)
            except PoetgenError as e:
                ui.error(str(e))
            except Exception as e:  # a bug: one line, and the session (and its poems) go on
                if debug:
                    ui.show(_traceback())
                ui.error(f"{type(e).__name__}: {e} (a bug in poetgen; --debug shows the "
                         "traceback)")
            except KeyboardInterrupt:  # Ctrl-C while a poem was written
                if scripted:
                    raise
                ui.say("cancelled", "yellow")
        except (EOFError, EndSession):
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt (a fresh one, as a shell does)
            if scripted:
                raise


def _traceback() -> RenderableType:
    from rich.traceback import Traceback

    return Traceback()


__all__ = ["Session", "SessionPoem", "Command", "COMMANDS", "ScriptUI", "run", "read_pick_answer",
           "help_table", "history_file", "new_session_file"]

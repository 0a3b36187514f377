"""The REPL's terminal front end, on prompt_toolkit (the line editor IPython uses).

prompt_toolkit gives line editing, Tab completion (of :commands and their values, from the
session's command table), a bottom status bar (the settings), history search (Up, Ctrl-R) and
Ctrl-L. This module adds what a REPL that runs long work between prompts needs:

- Keys typed while a poem is written must not be echoed into the output, must not run on their
  own, and must not arrive as escape sequences (an arrow key pressed then used to reach the next
  prompt as "\\x1b[A"). Between prompts the terminal is *held* (`HeldKeys`): no echo, no line
  editing, so keys wait as typed; at the next prompt they are read, parsed as keys, and what was
  text comes back as editable text (`typed_text`): nothing runs until Enter is pressed there.
- Ctrl-C while a poem is written cancels it; Ctrl-D stops it and ends the session (signals stay
  on while held, Ctrl-D mapped to the quit signal), at once, not when the poem is done.
- History holds only what was typed at the main prompt (never :pick's answers), one entry per
  line in the user's data directory.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application import get_app
from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.input.typeahead import get_typeahead
from prompt_toolkit.input.vt100_parser import Vt100Parser
from prompt_toolkit.key_binding.key_processor import KeyPress
from prompt_toolkit.keys import Keys
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

from poetgen.app.render import poem_rows, printable, wrap_fields
from poetgen.app.repl import EndSession, Session
from poetgen.errors import FileSystemError

BUSY = "writing… Ctrl-C stops, Ctrl-D quits"  # shown dim while a poem is written


class TerminalUI:
    """The REPL in a terminal: prompts, status bar, completion; use as a context manager."""

    has_status_bar = True

    def __init__(self, console: Console, stdin: TextIO, history_path: Path | None):
        """history_path: the file that keeps what was typed across sessions (None: this session
        only)."""
        self.console = console
        self.session: Session | None = None
        history = LineHistory(history_path) if history_path else InMemoryHistory()
        self.main = PromptSession(history=history,
                                  completer=SessionCompleter(self), complete_while_typing=False,
                                  bottom_toolbar=self._status)
        self.sub = PromptSession(history=InMemoryHistory())  # :pick's answers stay out of history
        self.held = HeldKeys(stdin.fileno()) if os.name == "posix" else None

    def attach(self, session: Session) -> None:
        self.session = session

    def __enter__(self) -> "TerminalUI":
        if self.held:
            self.held.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self.held.__exit__(*exc)

    @property
    def quit_requested(self) -> bool:
        return bool(self.held and self.held.quit_requested)

    # -- input ----------------------------------------------------------------------------------
    def read(self) -> str:
        return self.main.prompt("poetgen> ", default=self._typed())

    def ask(self, prompt: str) -> str:
        return self.sub.prompt(prompt, default=self._typed())

    def _typed(self) -> str:
        """Keys typed since the last prompt, as plain text to edit at the next one."""
        presses = get_typeahead(self.main.input)  # read by prompt_toolkit past the last Enter
        if self.held:
            presses += parse_keys(self.held.take())
        return typed_text(presses)

    def _status(self) -> str:
        width = get_app().output.get_size().columns
        return wrap_fields(self.session.settings.summary(), width) if self.session else ""

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around a generation: a note that it runs; Ctrl-D now ends the session at once."""
        if self.held:
            self.held.busy = True
            if self.held.quit_requested:  # Ctrl-D came just before: do not start
                self.held.busy = False
                raise EndSession
        # After `busy`: once this shows, Ctrl-D stops the work at once. Cut to the width: a
        # wrapped note leaves its first row behind when the last is cleared.
        self._write(f"\x1b[2m{BUSY[:max(1, self.console.width - 1)]}\x1b[0m")
        try:
            yield
        finally:
            if self.held:
                self.held.busy = False
            self._write("\r\x1b[2K")

    # -- output ---------------------------------------------------------------------------------
    def _write(self, raw: str) -> None:
        self.console.file.write(raw)
        self.console.file.flush()

    def say(self, text: str, style: str = "") -> None:
        text = escape(printable(text))
        self.console.print(f"[{style}]{text}[/]" if style else text, soft_wrap=False)

    def show(self, renderable: RenderableType) -> None:
        self.console.print(renderable, soft_wrap=False)  # tables and help wrap by words

    def poems(self, texts: list[str], all_numbered: bool = False) -> None:
        """Each poem on one row, or one verse line per row when the terminal is too narrow."""
        for i, text in enumerate(texts, 1):
            label = f"{i}. " if len(texts) > 1 or all_numbered else ""
            for row in poem_rows(text, self.console.width, label):
                self.console.print(Text(row, style="bold"), soft_wrap=False)  # prose: by words

    def error(self, text: str) -> None:
        self.console.print(f"error: {escape(printable(text))}", style="red", soft_wrap=False)


class SessionCompleter(Completer):
    """Tab: :command names, then their values (settings' choices, line numbers, #N, paths)."""

    def __init__(self, ui: TerminalUI):
        self.ui = ui
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event) -> Iterable[Completion]:
        if self.ui.session is None:
            return
        word, values = self.ui.session.completions(document.text_before_cursor)
        if values is None:
            yield from self.paths.get_completions(Document(word, len(word)), complete_event)
            return
        for value in values:
            yield Completion(value, start_position=-len(word), display=value.strip())


class LineHistory(History):
    """What was typed at the main prompt, one entry per line, newest last (readline's format,
    so a history written by an older poetgen still loads); the newest LIMIT entries are kept."""

    LIMIT = 1000

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def load_history_strings(self) -> Iterable[str]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        if len(lines) > 2 * self.LIMIT:  # trim now and then, not at every line
            from poetgen.files import atomic_write_bytes

            lines = lines[-self.LIMIT:]
            try:
                atomic_write_bytes(self.path, "".join(x + "\n" for x in lines).encode("utf-8"))
            except FileSystemError:  # what atomic_write_bytes makes of an OSError
                pass
        return [x for x in reversed(lines[-self.LIMIT:]) if x.strip()]

    def store_string(self, string: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:  # one short append per line
                f.write(" ".join(string.splitlines()) + "\n")
        except OSError:
            pass  # no history is no reason to stop a session


class HeldKeys:
    """Between prompts: keys wait unechoed for the next prompt; Ctrl-C and Ctrl-D act at once.

    At a prompt, prompt_toolkit puts the terminal in raw mode and restores the mode it found
    (this one) when the prompt returns. Here: no echo and no canonical line editing, so keys
    wait in the terminal as typed (an unfinished line, an arrow, Enter, all alike); ISIG stays,
    so Ctrl-C raises KeyboardInterrupt, and Ctrl-D is made the quit character, so it arrives as
    SIGQUIT rather than as an end-of-file mark that Linux drops when the mode changes; NOFLSH
    keeps typed keys when either fires. Ctrl-Z stops the process with the shell's mode set on
    the terminal; `fg` (SIGCONT) sets this one again.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.busy = False  # a poem is being written: Ctrl-D stops it (else it ends after)
        self.quit_requested = False

    def __enter__(self) -> "HeldKeys":
        import termios

        self.saved = termios.tcgetattr(self.fd)
        held = termios.tcgetattr(self.fd)
        held[3] = (held[3] & ~(termios.ICANON | termios.ECHO | termios.IEXTEN)) \
            | termios.ISIG | termios.NOFLSH
        held[6][termios.VMIN], held[6][termios.VTIME] = 1, 0
        held[6][termios.VQUIT] = b"\x04"
        self.held = held
        termios.tcsetattr(self.fd, termios.TCSANOW, held)
        self.saved_quit = signal.signal(signal.SIGQUIT, self._ctrl_d)
        self.saved_cont = signal.signal(signal.SIGCONT, self._continued)
        return self

    def __exit__(self, *exc) -> None:
        import termios

        signal.signal(signal.SIGQUIT, self.saved_quit)
        signal.signal(signal.SIGCONT, self.saved_cont)
        termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)

    def _continued(self, signum, frame) -> None:
        """Back from Ctrl-Z: while a poem is written, hold keys again (at a prompt,
        prompt_toolkit keeps its own mode and restores this one after)."""
        import termios

        # Only in the foreground: `bg` sends SIGCONT too, and a background process that sets
        # the terminal's mode is stopped again (SIGTTOU).
        try:
            foreground = os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError:  # not this process's controlling terminal: no job control to mind
            foreground = True
        if self.busy and foreground:
            termios.tcsetattr(self.fd, termios.TCSANOW, self.held)

    def _ctrl_d(self, signum, frame) -> None:
        self.quit_requested = True
        if self.busy:
            raise EndSession

    def take(self) -> str:
        """Everything typed so far and not yet read."""
        chunks = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 4096)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", errors="replace")


def parse_keys(typed: str) -> list[KeyPress]:
    """Raw terminal input as keys: '\\x1b[A' is Up, '\\r' is Enter, '春' is 春."""
    presses: list[KeyPress] = []
    parser = Vt100Parser(presses.append)
    parser.feed_and_flush(typed)
    return presses


def typed_text(presses: list[KeyPress]) -> str:
    """The text among keys typed ahead: characters and pastes kept (Backspace applied), lines
    joined by a space; arrows, function keys and other controls dropped."""
    lines, line = [], []
    for press in presses:
        if press.key == Keys.BracketedPaste:
            line.extend(" ".join(press.data.splitlines()))
        elif press.key in (Keys.ControlM, Keys.ControlJ):
            lines.append("".join(line))
            line = []
        elif press.key in (Keys.ControlH, Keys.Backspace):
            if line:
                line.pop()
        elif not isinstance(press.key, Keys) and press.key.isprintable():
            line.append(press.key)
    lines.append("".join(line))
    return " ".join(x.strip() for x in lines if x.strip())


__all__ = ["TerminalUI", "HeldKeys", "LineHistory", "parse_keys", "typed_text"]

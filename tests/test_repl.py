"""The REPL: scripted sessions (CliRunner), its parts without a terminal, and real terminal
sessions in a pseudo-terminal, read through a terminal emulator (pyte) so that tests see the
screen a user sees. Every wait is for something to appear on screen, bounded by a timeout."""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from poetgen.app.cli import cli
from poetgen.app.render import poem_rows, verse_rows, wrap_fields
from poetgen.app.repl import COMMANDS, Session, read_pick_answer
from poetgen.settings import GenerationSettings
from poetgen.verse.check import check_poem
from poetgen.verse.prosody import FORMS, split_verse

from test_constrain import synthetic_poems

POEM = re.compile(r"^(?:\d+\. )?(\S{5,7}，\S{5,7}。(?:\S{5,7}，\S{5,7}。)+)$")


@pytest.fixture(scope="module")
def checkpoint(verse_checkpoint):
    return verse_checkpoint


def repl(checkpoint, script, *args):
    return CliRunner().invoke(cli, ["repl", "--checkpoint", str(checkpoint), *args], input=script)


def poems_in(text: str) -> list[str]:
    return [m[1] for line in text.splitlines() if (m := POEM.match(line))]


# ----------------------------------------------------------------------------------------------
# Scripted sessions (stdin not a terminal)


def test_scripted_session(checkpoint, tmp_path):
    saved = tmp_path / "poems.txt"
    saved.write_text("一首旧诗", encoding="utf-8")  # no final newline: the append must add one
    script = "\n".join([":form 五绝", ":temp 0.7", ":tones strict", ":seed 3", "春风",
                        ":line 3", ":check", f":save {saved}", ":undo", ":history", ":quit"]) + "\n"
    r = repl(checkpoint, script)
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    out = r.stdout
    assert "form 五绝 · rhyme pingshui · tones strict · temp 0.7" in out
    first, rewritten = poems_in(out)[:2]
    assert first.startswith("春风") and check_poem(first, tones="strict").ok
    a, b = split_verse(first), split_verse(rewritten)
    assert a[:2] == b[:2] and a[3] == b[3]  # only line 3 may change
    assert check_poem(rewritten, tones="strict").ok
    assert "no violations" in out and "平" in out
    assert saved.read_text(encoding="utf-8") == f"一首旧诗\n{rewritten}\n"
    assert f"appended to {saved}" in out
    assert "1. " + first in out and "2. " + rewritten in out


def test_errors_go_to_stderr_and_set_the_exit_status(checkpoint):
    r = repl(checkpoint, "春风\n:foo\n:temp abc\n")
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["error: unknown command :foo; type :help for the list",
                                     "error: :temp needs a number > 0, e.g. 0.8, not 'abc'"]
    assert "error" not in r.stdout and len(poems_in(r.stdout)) == 1
    assert repl(checkpoint, "春风\n:temp 0.5\n").exit_code == 0  # no failure: 0


def test_bad_input_is_one_line_and_the_session_goes_on(checkpoint, tmp_path):
    """Each of these crashed the REPL or was accepted and failed later (issue 18)."""
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    script = "\n".join([
        "春风",
        f":save {tmp_path}",  # a folder
        f":save {tmp_path}/no/such/dir/x.txt",  # a missing folder: not created silently
        f":save {tmp_path}/file.txt/x",  # a file used as a folder
        ":seed 99999999999999999999999",  # crashed the next poem (overflow)
        ":temp inf", ":temp -1", ":form 九言", ":tones bogus", ":n 0",
        ":acrostic 春江花月夜",  # 5 heads for the 4 lines of a 七绝
        ":acrostic 春😀花月",  # not Chinese: was dropped silently, shifting the heads
        ":rhyme-group 没有这个韵",
        ":line 9", ":line 3 #4", ":check #2", ":frobnicate",
        "春风",
    ]) + "\n"
    r = repl(checkpoint, script)
    assert r.exit_code == 1
    errors = r.stderr.splitlines()
    assert len(errors) == 16 and all(e.startswith("error: ") for e in errors), r.stderr
    assert f"{tmp_path} is a folder" in errors[0]
    assert f"no folder {tmp_path}/no/such/dir" in errors[1]
    assert "file.txt is a file, not a folder" in errors[2]
    assert not (tmp_path / "no").exists()
    assert ":seed needs a whole number" in errors[3] and ":temp needs a number > 0" in errors[4]
    assert ":acrostic 春江花月夜 has 5 characters but a 七绝 has 4 lines" in errors[9]
    assert ":acrostic needs Chinese characters" in errors[10]
    assert errors[11].startswith("error: :rhyme-group: ")
    assert ":line needs a line number, 1 to 4" in errors[12]
    assert "there is no poem #4; the poems shown are #1 to #1" in errors[13]
    assert "there is no poem #2" in errors[14] and "unknown command :frobnicate" in errors[15]
    assert "--" not in r.stderr  # messages name :commands, never command-line flags
    assert len(poems_in(r.stdout)) == 2  # the settings were refused: the last poem is fine


def test_constraints_no_poem_can_meet_are_refused_when_set(checkpoint):
    """The decoder's own checks run when a constraint is set, in the REPL's names."""
    r = repl(checkpoint, ":acrostic 春江花月\n:ban 春\n:acrostic 鑫\n:no-repeat on\n"
                         ":acrostic 春春\n秋风\n:acrostic\n")
    assert r.stderr.splitlines() == [
        "error: 春 is both required and banned; take it out of :ban, or out of :acrostic",
        "error: '鑫' (line 1, character 1) is not in the model's vocabulary, so it cannot be "
        "written; choose another character",
        "error: :no-repeat, but the fixed characters repeat 春",
        "error: the start puts '秋' at line 1, character 1, where another constraint already "
        "puts '春'"]
    assert r.stdout.splitlines()[-1] == ":acrostic is 春江花月"  # every refused change undone


def test_a_bug_is_one_line_and_the_session_goes_on(checkpoint, monkeypatch):
    import poetgen.write

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    real = poetgen.write.write
    calls = iter([broken, real])
    monkeypatch.setattr(poetgen.write, "write", lambda *a, **k: next(calls)(*a, **k))
    r = repl(checkpoint, "春风\n春风\n")
    assert r.stderr.splitlines() == ["error: RuntimeError: boom (a bug in poetgen; --debug shows "
                                     "the traceback)"]
    assert len(poems_in(r.stdout)) == 1


def test_save_says_saved_or_appended(checkpoint, tmp_path):
    target = tmp_path / "new.txt"
    r = repl(checkpoint, f"春风\n:save {target}\n:save {target}\n")
    assert r.exit_code == 0, r.output
    poem = poems_in(r.stdout)[0]
    assert f"saved to {target}" in r.stdout and f"appended to {target}" in r.stdout
    assert target.read_text(encoding="utf-8") == f"{poem}\n{poem}\n"


def test_commands_act_on_the_poem_shown_in_its_own_form(checkpoint, tmp_path):
    """:form 五绝, write, :form 七绝, write, :undo, :line 2 used the 七绝 settings on the 五绝."""
    r = repl(checkpoint, ":form 五绝\n春风\n:form 七绝\n明月\n:undo\n:line 2\n:quit\n")
    assert r.exit_code == 0, r.output
    wujue, qijue, shown, rewritten = poems_in(r.stdout)
    assert shown == wujue and len(split_verse(qijue)[0]) == 7
    a, b = split_verse(wujue), split_verse(rewritten)
    assert [len(x) for x in b] == [5] * 4 and a[0] == b[0] and a[2:] == b[2:]
    assert check_poem(rewritten).ok

    target = tmp_path / "two.txt"
    r = repl(checkpoint, f":n 3\n:seed 5\n春风\n:line 3 #2\n:undo\n:check #3\n:save {target} #2\n"
                         ":select 1\n:line 4\n")
    assert r.exit_code == 0, r.output
    one, two, three, two_new, *_ = poems_in(r.stdout)
    a, b = split_verse(two), split_verse(two_new)
    assert a[:2] == b[:2] and a[3] == b[3]
    assert target.read_text(encoding="utf-8") == two + "\n"
    report_chars = "".join(re.findall(r"^ \d\s+(.*)$", r.stdout, re.M)).replace(" ", "")
    assert report_chars == "".join(split_verse(three))  # :check #3 showed poem 3
    last = poems_in(r.stdout)[-1]
    assert split_verse(last)[:3] == split_verse(one)[:3]  # :select 1 then :line 4


def test_line_keeps_the_acrostic_head(checkpoint):
    r = repl(checkpoint, ":acrostic 春江花月\n:seed 2\n春\n:line 2\n:line 3\n")
    assert r.exit_code == 0, r.output
    for poem in poems_in(r.stdout):
        assert [line[0] for line in split_verse(poem)] == list("春江花月")


def test_check_a_pasted_poem(checkpoint):
    r = repl(checkpoint, ":check 白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n")
    assert r.exit_code == 0, r.output
    assert "五绝" in r.stdout and "no violations" in r.stdout and "qióng" in r.stdout


def test_a_new_form_or_scheme_clears_what_no_longer_fits(checkpoint):
    r = repl(checkpoint, ":form 七律\n:acrostic 春江花月夜\n:form 七绝\n:acrostic\n春\n"
                         ":rhyme-group 下平十一尤\n:rhyme modern\n:rhyme-group\n")
    assert r.exit_code == 0, r.output
    assert ":acrostic 春江花月夜 cleared: :acrostic 春江花月夜 has 5 characters but a 七绝 has " \
           "4 lines" in r.stdout
    assert ":acrostic is off" in r.stdout
    assert len(split_verse(poems_in(r.stdout)[0])) == 4
    assert ":rhyme-group 下平十一尤 cleared: :rhyme-group: " in r.stdout
    assert ":rhyme-group is off" in r.stdout


def test_a_setting_without_a_value_shows_it(checkpoint):
    r = repl(checkpoint, ":form\n:temp\n:no-repeat\n:no-repeat on\n:no-repeat\n:ban 月\n春\n")
    assert r.exit_code == 0, r.output
    assert [x for x in r.stdout.splitlines() if " is " in x] == [
        ":form is 七绝", f":temp is {GenerationSettings.default('temperature'):g}", ":no-repeat is off",
        ":no-repeat is on"]
    poem = poems_in(r.stdout)[0]
    chars = "".join(split_verse(poem))
    assert "月" not in chars and len(set(chars)) == len(chars)


def test_pick_several_characters_then_done(checkpoint):
    r = repl(checkpoint, ":form 七绝\n:pick\n1\n\n:undo\n春风\n:bogus\n:done\n:history\n")
    assert r.exit_code == 1  # :bogus inside :pick is an error
    assert "Pick the next character" in r.stdout
    assert r.stderr.startswith("error: in :pick, type 1-9, characters, :done, :undo or :cancel")
    final = poems_in(r.stdout)[0]
    assert check_poem(final).ok and final[1:3] == "春风"  # 1, Enter (undone), 春风
    assert "1:" in r.stdout and "%" in r.stdout


def test_unknown_characters_and_free_mode(checkpoint):
    r = repl(checkpoint, "鑫\n:mode free\n春\n:quit\n")
    assert "never saw: '鑫'" in r.stderr
    assert any(line.startswith("春") for line in r.stdout.splitlines()[2:])


def test_help_lists_every_command_and_setting(checkpoint):
    r = repl(checkpoint, ":help\n")
    assert r.exit_code == 0
    for name in COMMANDS:
        assert re.search(rf"^:{re.escape(name)}\b", r.stdout, re.M), name
    for option in GenerationSettings.options("repl").values():
        assert f":{option.name}" in r.stdout
    assert ":max-chars" in r.stdout and ":pattern" not in r.stdout  # a CLI-only setting


def test_repl_help_says_how_scripts_see_failures():
    r = CliRunner().invoke(cli, ["repl", "--help"], terminal_width=80)
    assert "exit status is 1 if any command failed" in " ".join(r.stdout.split())
    assert r"printf '春风\n:line 2\n:check\n:save poems.txt\n' | poetgen repl" in r.stdout


# ----------------------------------------------------------------------------------------------
# Parts, without a terminal


class Recorder:
    """A front end that records what the session shows."""

    has_status_bar, quit_requested = True, False

    def __init__(self):
        self.said, self.shown_poems, self.shown = [], [], []

    def say(self, text, style=""):
        self.said.append(text)

    def show(self, renderable):
        self.shown.append(renderable)

    def poems(self, texts, all_numbered=False):
        self.shown_poems.append(texts)

    def error(self, text):
        raise AssertionError(text)

    def ask(self, prompt):
        raise EOFError

    def busy(self):
        from contextlib import nullcontext

        return nullcontext()


def test_completions_come_from_the_command_and_settings_tables():
    session = Session(None, None, Recorder())
    assert session.completions(":fo") == (":fo", [":form "])
    assert session.completions(":a") == (":a", [":again", ":acrostic "])
    assert session.completions(":form ") == ("", ["五绝", "五律", "七绝", "七律", "off"])
    assert session.completions(":form 七") == ("七", ["七绝", "七律"])
    assert session.completions(":tones s") == ("s", ["strict"])
    assert session.completions(":no-repeat ") == ("", ["on", "off"])
    assert session.completions(":save po") == ("po", None)  # a file path
    assert session.completions("春风") == ("", [])
    word, names = session.completions(":")
    assert len(names) == len(COMMANDS)


def test_session_file_keeps_every_poem_written(tmp_path):
    class Written:
        def __init__(self, text):
            self.text = text

    session = Session(None, None, Recorder(), session_file=tmp_path / "sessions" / "s.txt")
    session._present([Written("甲"), Written("乙")])
    session._present([Written("丙")])
    assert (tmp_path / "sessions" / "s.txt").read_text(encoding="utf-8") == "甲\n乙\n丙\n"
    session.session_file = tmp_path  # a folder: cannot be written; say so once, go on
    session._present([Written("丁")])
    assert session.session_file is None and "cannot write the session file" in session.ui.said[-1]
    assert [p.text for p in session.poems] == ["甲", "乙", "丙", "丁"]


def test_session_files_never_share_a_name(tmp_path, monkeypatch):
    from datetime import datetime

    from poetgen.app.repl import new_session_file

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    now = datetime(2026, 3, 1, 12, 0, 0)
    first, second = new_session_file(now), new_session_file(now)  # two sessions, one second
    assert first.name == "2026-03-01_120000.txt" and second.name == "2026-03-01_120000-2.txt"
    assert first.parent == tmp_path / "poetgen" / "sessions" and first.exists()


def test_no_home_folder_means_no_files_not_a_crash(monkeypatch):
    """No $HOME, no XDG_DATA_HOME and a user the password database does not know: Path.home()
    raised RuntimeError through the REPL's start; it is an OSError, which the start handles."""
    from poetgen.app.repl import data_dir

    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(
        RuntimeError("Could not determine home directory."))))
    with pytest.raises(OSError, match="set XDG_DATA_HOME"):
        data_dir()


@pytest.mark.parametrize("answer, expected", [
    ("", ("push", "春")), ("2", ("push", "风")), ("春风", ("push", "春风")),
    ("春 风", ("push", "春风")), (":done", ("done", "")), ("：undo", ("undo", "")),
    (":cancel", ("cancel", "")), (":quit", ("cancel", "")), ("5", ("error", "")),
    (":x", ("error", "")),
    ("③", ("push", "月")), ("２", ("push", "风")), ("²", ("push", "风")),  # ③ crashed :pick
    ("⑤", ("error", "")),
])
def test_read_pick_answer(answer, expected):
    step = read_pick_answer(answer, ["春", "风", "月"])
    assert (step.action, step.chars) == expected
    assert bool(step.message) == (step.action == "error")


def test_verse_rows_and_poem_rows():
    poem = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
    assert verse_rows(poem).split("\n") == ["白日依山尽，", "黄河入海流。", "欲穷千里目，",
                                            "更上一层楼。"]
    assert poem_rows(poem, 48) == [poem]  # 24 characters, 48 cells: fits
    assert poem_rows(poem, 47, "2. ") == ["2. 白日依山尽，", "   黄河入海流。", "   欲穷千里目，",
                                         "   更上一层楼。"]
    assert poem_rows(poem, None) == [poem]
    prose = "To be, or not to be,\nthat is the question."  # free text: its own rows fit
    assert poem_rows(prose, 30) == [prose]


def test_wrap_fields():
    assert wrap_fields("a · bb · ccc", 80) == "a · bb · ccc"
    assert wrap_fields("a · bb · ccc", 6) == "a · bb\nccc"
    assert wrap_fields("form 七绝 · n 1", 10) == "form 七绝\nn 1"  # 七绝 is 4 cells wide


@pytest.mark.parametrize("keys, text", [
    ("春风", "春风"),
    ("\x1b[A\x1b[B:temp 0.5", ":temp 0.5"),  # arrows dropped, not "[A"
    ("ab\rcd\r", "ab cd"),  # Enter typed ahead runs nothing: lines come back joined
    ("春x\x7f风", "春风"),  # Backspace applied
    ("\x1b[200~床前明月光\n疑是地上霜\x1b[201~", "床前明月光 疑是地上霜"),  # a paste
    ("\x03\x04\x1bOP", ""),  # Ctrl-C, Ctrl-D, F1: nothing to edit
])
def test_typed_text(keys, text):
    pytest.importorskip("prompt_toolkit")
    from poetgen.app.terminal import parse_keys, typed_text

    assert typed_text(parse_keys(keys)) == text


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_held_keys_wait_unechoed_and_whole():
    pytest.importorskip("prompt_toolkit")
    import select
    import termios

    from poetgen.app.terminal import HeldKeys

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with HeldKeys(slave) as held:
            os.write(master, "半行\x1b[A".encode())  # no Enter: in canonical mode unreadable
            assert select.select([slave], [], [], 5)[0]
            typed = ""
            while not typed.endswith("\x1b[A"):
                typed += held.take()
            assert typed == "半行\x1b[A"
            assert not select.select([master], [], [], 0)[0]  # nothing was echoed
        assert termios.tcgetattr(slave) == before  # the user's mode is back
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_held_keys_are_held_again_after_ctrl_z_and_fg():
    """Ctrl-Z then `fg` left the shell's mode (echo, lines) on the terminal for the rest of the
    session: keys typed during a poem were echoed and Ctrl-D no longer quit."""
    pytest.importorskip("prompt_toolkit")
    import termios

    from poetgen.app.terminal import HeldKeys

    master, slave = os.openpty()
    try:
        cooked = termios.tcgetattr(slave)
        with HeldKeys(slave) as held:
            held.busy = True  # a poem is being written
            termios.tcsetattr(slave, termios.TCSANOW, cooked)  # as the shell leaves it on fg
            os.kill(os.getpid(), signal.SIGCONT)  # what `fg` sends; handled before kill returns
            mode = termios.tcgetattr(slave)
            assert not mode[3] & termios.ECHO and mode[6][termios.VQUIT] == b"\x04"
            held.busy = False  # at a prompt, prompt_toolkit's mode is left alone
            termios.tcsetattr(slave, termios.TCSANOW, cooked)
            os.kill(os.getpid(), signal.SIGCONT)
            assert termios.tcgetattr(slave)[3] & termios.ECHO
        assert signal.getsignal(signal.SIGCONT) is signal.SIG_DFL  # put back
    finally:
        os.close(master)
        os.close(slave)


def test_history_file_is_one_line_per_entry(tmp_path):
    pytest.importorskip("prompt_toolkit")
    from poetgen.app.terminal import LineHistory

    path = tmp_path / "poetgen" / "history"
    path.parent.mkdir()
    path.write_text(":form 五绝\n春风\n", encoding="utf-8")  # as readline wrote it
    history = LineHistory(path)
    assert list(history.load_history_strings()) == ["春风", ":form 五绝"]  # newest first
    history.store_string(":temp 0.5")
    assert path.read_text(encoding="utf-8").splitlines() == [":form 五绝", "春风", ":temp 0.5"]


# ----------------------------------------------------------------------------------------------
# Real terminal sessions


class Terminal:
    """The REPL in a pseudo-terminal of `rows` x `cols`, its output drawn by a terminal emulator.

    `wait` reads output until the screen shows what is expected, or fails after `timeout`
    seconds showing the screen; nothing here sleeps.
    """

    def __init__(self, checkpoint, home, rows=24, cols=80, timeout=60):
        pexpect = pytest.importorskip("pexpect")
        pyte = pytest.importorskip("pyte")
        pytest.importorskip("prompt_toolkit")
        env = dict(os.environ, XDG_DATA_HOME=str(home), OMP_NUM_THREADS="1", TERM="xterm")
        env.pop("PROMPT_TOOLKIT_NO_CPR", None)
        # As a user's shell starts it: with Ctrl-C's default action. A test run started in the
        # background of a script has SIGINT ignored, and children would inherit that.
        self.child = pexpect.spawn(
            sys.executable, ["-m", "poetgen", "repl", "--checkpoint", str(checkpoint)], env=env,
            encoding="utf-8", dimensions=(rows, cols),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.pexpect, self.timeout = pexpect, timeout
        child = self.child

        class Screen(pyte.Screen):
            def write_process_input(self, data):  # answers to the cursor-position queries
                child.send(data)

        self.screen = Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        self.ended = False

    @property
    def rows(self) -> list[str]:
        return [row.rstrip() for row in self.screen.display]

    @property
    def text(self) -> str:
        return "\n".join(self.rows)

    @property
    def cursor_row(self) -> str:
        return self.rows[self.screen.cursor.y]

    def wait(self, check, what: str):
        """Read output until `check()` is true (returns its value) or the timeout passes."""
        deadline = time.monotonic() + self.timeout
        while not (found := check()):
            left = deadline - time.monotonic()
            if left <= 0 or self.ended:
                pytest.fail(f"the screen never showed {what}:\n{self.text}")
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=min(left, 5)))
            except self.pexpect.TIMEOUT:
                pass
            except self.pexpect.EOF:
                self.ended = True
        return found

    def wait_for(self, pattern: str) -> re.Match:
        return self.wait(lambda: re.search(pattern, self.text, re.M), repr(pattern))

    def prompt(self, typed: str = "") -> None:
        """Wait until the cursor is on a prompt showing `typed` (a bare prompt for '')."""
        self.wait(lambda: self.cursor_row == f"poetgen> {typed}".rstrip(),
                  f"a prompt with {typed!r}")

    def run(self, line: str) -> None:
        """Type a line at the prompt, wait for its echo, press Enter, wait for the next prompt."""
        self.child.send(line)
        self.prompt(line)
        self.child.send("\r")
        self.prompt()

    def exit_status(self) -> int:
        self.wait(lambda: self.ended, "the end of the session")
        self.child.close()
        return self.child.exitstatus


def status_rows(term: Terminal) -> list[str]:
    """The status bar: from the last row that starts with the settings' summary, to the bottom."""
    starts = [i for i, row in enumerate(term.rows) if row.startswith(("form ", "free text "))]
    return [row for row in term.rows[starts[-1]:] if row] if starts else []


def wait_status(term: Terminal, **settings) -> list[str]:
    """Wait until the whole status bar shows `settings`' summary (all its rows: a bar is drawn
    row by row, so its first row alone can be on the screen before the rest); return its rows."""
    summary = GenerationSettings(**settings).summary()
    term.wait(lambda: " · ".join(status_rows(term)) == summary, f"the status bar {summary!r}")
    return status_rows(term)


def test_terminal_completion_status_bar_history(checkpoint, tmp_path):
    term = Terminal(checkpoint, tmp_path)
    term.prompt()
    wait_status(term, form="七绝")
    assert term.rows[-2].startswith("form 七绝 · rhyme pingshui")  # the status bar, at the bottom
    assert term.rows[-1].startswith("seed")  # 80 columns: the rest on the row below
    # Tab completes the command, then lists the values of the setting.
    term.child.send(":fo\t")
    term.prompt(":form")
    term.child.send("\t")
    term.wait(lambda: all(re.search(rf"^\s+{form}\s*$", term.text, re.M) for form in FORMS),
              "the four forms listed")
    term.child.send("五绝")
    term.prompt(":form 五绝")
    term.child.send("\r")
    term.prompt()
    wait_status(term, form="五绝")
    # A poem; the status bar changes in place, it is not printed among the output.
    term.run("春风")
    assert any(POEM.match(row) and row.startswith("春风") for row in term.rows)
    term.run(":temp 0.5")
    assert len(wait_status(term, form="五绝", temperature=0.5)) == 2
    assert term.text.count("form 五绝 ·") == 1
    # :pick's answers do not go into the history.
    term.child.send(":pick\r")
    term.wait_for("Pick the next character")
    term.wait(lambda: term.cursor_row == "pick>", "the pick prompt")
    term.child.send("1\r")
    term.wait(lambda: term.cursor_row == "pick>" and "1:" in term.text, "the next choice")
    term.child.send("\x03")  # Ctrl-C leaves :pick, on a line of its own
    term.wait_for(r"^pick cancelled$")
    term.prompt()
    # Ctrl-R searches what was typed at the main prompt.
    term.child.send("\x12temp")
    term.wait_for(r"reverse-i-search\)`temp': :temp 0\.5")
    term.child.send("\x07")  # Ctrl-G: leave the search
    term.prompt()
    # Ctrl-L clears the screen: the greeting is gone, the prompt is on the first row.
    term.child.send("\x0c")
    term.wait(lambda: term.rows[0] == "poetgen>", "a cleared screen")
    assert "poetgen REPL" not in term.text
    term.child.sendeof()
    assert term.exit_status() == 0
    history = (tmp_path / "poetgen" / "history").read_text(encoding="utf-8").splitlines()
    assert history == [":form 五绝", "春风", ":temp 0.5", ":pick"]
    sessions = list((tmp_path / "poetgen" / "sessions").iterdir())
    assert len(sessions) == 1 and sessions[0].read_text(encoding="utf-8").startswith("春风")


def test_terminal_keys_during_generation_and_ctrl_c_then_ctrl_d(checkpoint, tmp_path):
    term = Terminal(checkpoint, tmp_path)
    term.prompt()
    for line in (":mode free", ":n 100", ":max-chars 50000"):  # a long generation
        term.run(line)
    term.child.send("春\r")
    term.wait_for("writing… Ctrl-C stops")
    # Up, a line with Enter, more text: typed while the poem is written.
    term.child.send("\x1b[Aab\rcd")
    term.child.sendintr()
    term.wait_for(r"^cancelled$")
    term.prompt("ab cd")  # back as editable text: no escape sequence, nothing ran, no history
    assert "error" not in term.text and "[A" not in term.text
    term.child.send("\x15")  # Ctrl-U empties the line
    term.prompt()
    # Ctrl-C, then at once Ctrl-D, both before the prompt is back: the session ends.
    term.child.send("春\r")
    term.wait_for(r"^writing… Ctrl-C stops")
    term.child.sendintr()
    term.child.sendeof()
    assert term.exit_status() == 0
    assert list((tmp_path / "poetgen" / "sessions").iterdir()) == []  # no poem, no file left


def test_terminal_narrow_verse_per_row_and_ctrl_d_while_writing(checkpoint, tmp_path):
    term = Terminal(checkpoint, tmp_path, rows=30, cols=36)
    term.prompt()
    bar = wait_status(term, form="七绝")  # the whole summary, broken between fields to fit
    assert all(len(row) <= 36 for row in bar) and len(bar) > 1
    term.run(":n 2")
    term.run("春风")
    rows = [row for row in term.rows if re.fullmatch(r"(\d\. |   )\S{7}[，。]", row)]
    assert len(rows) == 8 and rows[0].startswith("1. 春风") and rows[4].startswith("2. 春风")
    poems = ["".join(r[3:] for r in rows[:4]), "".join(r[3:] for r in rows[4:])]
    assert all(check_poem(p).ok for p in poems)
    # Ctrl-D while a long generation runs ends the session at once, keeping the poems.
    for line in (":mode free", ":n 100", ":max-chars 50000"):
        term.run(line)
    term.child.send("春\r")
    term.wait_for(r"^writing… Ctrl-C stops")
    term.child.sendeof()
    assert term.exit_status() == 0
    kept = next((tmp_path / "poetgen" / "sessions").iterdir()).read_text(encoding="utf-8")
    assert kept.splitlines() == poems


# ----------------------------------------------------------------------------------------------


def test_eval_generate_metrics_next_to_real_poems(checkpoint, tmp_path):
    """`eval --generate` (issue: generation metrics), using this module's small checkpoint."""
    import json

    real = tmp_path / "real.txt"
    real.write_text(synthetic_poems(40, seed=9), encoding="utf-8")
    r = CliRunner().invoke(cli, ["eval", str(checkpoint), "--generate", "20", "--form", "五绝,七律",
                                 "--real", str(real), "--corpus", str(real), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["form"], x["source"]) for x in rows] == [("五绝", "model"), ("五绝", "real.txt"),
                                                       ("七律", "model"), ("七律", "real.txt")]
    model = rows[0]
    assert model["poems"] == 20 and model["form_ok"] == 1.0 and model["rhyme_pingshui"] == 1.0
    assert model["tones_loose"] == 1.0 and 0 < model["distinct_2"] <= 1
    assert rows[1]["copy_lines"] == 1.0  # real poems measured against themselves: all copied
    assert rows[1]["longest_copy"] == 5 and model["mean_logprob"] < 0
    r = CliRunner().invoke(cli, ["eval", str(checkpoint), "--generate", "4", "--real", str(real),
                                 "--corpus", str(real)])  # the table, to a pipe: whole cells
    assert r.exit_code == 0 and "100.0%" in r.stdout and "…" not in r.stdout
    r = CliRunner().invoke(cli, ["eval", str(checkpoint)])
    assert r.exit_code == 1 and "give a FILE" in r.output



def test_line_rewrites_under_every_constraint_of_its_poem(checkpoint):
    """:line takes all of the poem's own constraints (PoemSpec's: readings too, which it used
    to take from today's settings), and today's sampling knobs."""
    from poetgen.lm.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    session = Session(ck.model, ck.vocab, Recorder())
    for line in (":form 五绝", ":readings all", ":tones strict", ":no-repeat on", ":seed 3", "春",
                 ":readings common", ":tones loose", ":no-repeat off", ":temp 0.5", ":line 2"):
        session.handle(line)
    written, rewritten = (p.settings for p in session.poems)
    for name in GenerationSettings.POEM_CONSTRAINTS:
        if name not in ("pattern", "acrostic", "prime"):
            assert getattr(rewritten, name) == getattr(written, name), name
    assert (written.readings, written.tones, rewritten.temperature) == ("all", "strict", 0.5)


@pytest.mark.skipif(os.name != "posix", reason="symbolic links and FIFOs")
def test_save_appends_through_a_link_and_refuses_a_fifo(checkpoint, tmp_path):
    """:save wrote a new file over a symbolic link, and blocked for good reading a FIFO."""
    target, link, fifo = tmp_path / "t.txt", tmp_path / "link.txt", tmp_path / "fifo"
    target.write_text("old\n", encoding="utf-8")
    link.symlink_to(target)
    os.mkfifo(fifo)
    r = repl(checkpoint, f"春风\n:save {link}\n:save {fifo}\n")
    poem = poems_in(r.stdout)[0]
    assert link.is_symlink() and target.read_text(encoding="utf-8") == f"old\n{poem}\n"
    assert r.stderr.splitlines() == [f"error: {fifo} is not a regular file; give a file to "
                                     "append to"]


def test_what_a_user_typed_is_shown_as_typed_never_run_by_the_terminal(checkpoint):
    """rich turned ':cat:' into 🐱, and a pasted escape sequence (ESC [8m conceals the rest)
    went to the terminal as it was."""
    r = repl(checkpoint, ":ban :cat:\n:ban \x1b[8m鹤\n:form :dog:\n"
                         ":check \x1b[8m白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n")
    assert "ban :cat:" in r.stdout and "🐱" not in r.stdout and "🐶" not in r.stderr
    assert "\x1b" not in r.stdout and "ban \\x1b[8m鹤" in r.stdout
    assert "not Chinese characters: \\x1b [ 8 m" in r.stdout  # :check's report too
    assert "not ':dog:'" in r.stderr


def test_line_rewrites_under_the_poems_own_constraints_only(verse_checkpoint, monkeypatch):
    """:line on free text gave the rewritten line the heads of an acrostic set after it was
    written, and a theme set since forced its keywords into the one free line."""
    import poetgen.write
    from poetgen.app.repl import SessionPoem
    from poetgen.lm.checkpoint import load_checkpoint

    ck = load_checkpoint(verse_checkpoint)
    used = []
    real_write = poetgen.write.write
    monkeypatch.setattr(poetgen.write, "write", lambda model, vocab, settings, **kw:
                        used.append(settings) or real_write(model, vocab, settings, **kw))
    session = Session(ck.model, ck.vocab, Recorder(), GenerationSettings(form="五绝", seed=1))
    free = real_write(ck.model, ck.vocab, GenerationSettings(form="五绝", seed=2))[0].text
    session._present([SessionPoem(free, GenerationSettings(mode="free"))])
    for line in (":acrostic 春江花月", ":ban 雪", ":theme 秋", ":line 2"):
        session.handle(line)
    settings = used[-1]
    assert settings.form == "五绝" and settings.pattern.split("/")[1] == "?????"  # no 江 head
    assert settings.ban == "" and settings.theme == "" and settings.keywords == ""
    session._present([SessionPoem(free, GenerationSettings(form="五绝", ban="月"))])
    session.handle(":line 3")
    assert used[-1].ban == "月" and used[-1].theme == ""  # its own ban, not today's theme


def test_select_needs_one_poem_number(checkpoint):
    """:select abc, :select -1 and :select 1 2 were accepted without a word."""
    r = repl(checkpoint, "春风\n:select abc\n:select -1\n:select 1 2\n:select 1\n")
    assert r.stderr.splitlines() == [f"error: :select needs a poem number, e.g. :select 2, not "
                                     f"{bad!r}" for bad in ("abc", "-1", "1 2")]


def test_a_banned_character_names_what_puts_it_there(checkpoint):
    """:ban of a character the start puts in place named :pattern and :keywords, neither of
    which did (and :pattern is no REPL command)."""
    r = repl(checkpoint, ":ban 春\n春风\n")
    assert r.stderr.splitlines() == ["error: 春 is both required and banned; take it out of "
                                     ":ban, or out of the start"]


def test_input_as_chinese_input_methods_and_editors_give_it(checkpoint):
    """A full-width space after a command (an input method's 　), a script saved with a UTF-8
    byte-order mark, and a start pasted on two lines (one input in a terminal): each was
    refused or misread."""
    r = repl(checkpoint, "\ufeff:form 五律\n：tones　strict\n")
    assert r.exit_code == 0, r.stderr
    assert "form 五律 · rhyme pingshui · tones strict" in r.stdout
    from poetgen.lm.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    session = Session(ck.model, ck.vocab, Recorder(), GenerationSettings(form="五律", seed=1))
    session.handle("春风千万里，\n明月落江楼。")  # pasted: the lines joined as written
    assert session.poems[-1].text.startswith("春风千万里，明月落江楼。")
    # Lines without punctuation stay lines (split_verse ends a line at a space).
    session.handle(":check 白日依山尽\n黄河入海流\n欲穷千里目\n更上一层楼")
    shown = Console(file=io.StringIO(), width=100)
    shown.print(session.ui.shown[-1])
    assert "近体" in shown.file.getvalue() and "wrong length" not in shown.file.getvalue()


def test_terminal_narrower_than_the_busy_note_leaves_no_trace_of_it(checkpoint, tmp_path):
    """Under 35 columns the "writing…" note wrapped, and clearing its last row left the first
    above every poem."""
    term = Terminal(checkpoint, tmp_path, rows=30, cols=24)
    term.prompt()
    term.run("春风")
    assert not any("writing" in row for row in term.rows), term.text
    term.child.sendeof()
    assert term.exit_status() == 0

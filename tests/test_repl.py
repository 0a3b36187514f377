"""The REPL: scripted sessions through CliRunner, and one real terminal session (pty)."""

import functools
import os
import signal
import sys
import time

import pytest
from click.testing import CliRunner

from poetgen.verse.check import check_poem
from poetgen.app.cli import cli
from poetgen.verse.prosody import split_verse
from poetgen.app.repl import TypedAhead, parse_typed, typed_ahead

from test_constrain import synthetic_poems


@pytest.fixture(scope="module")
def checkpoint(verse_checkpoint):
    return verse_checkpoint


def repl(checkpoint, script, *args):
    return CliRunner().invoke(cli, ["repl", "--checkpoint", str(checkpoint), *args], input=script)


def test_scripted_session(checkpoint, tmp_path):
    saved = tmp_path / "poems.txt"
    saved.write_text("一首旧诗", encoding="utf-8")  # no final newline: the append must add one
    script = "\n".join([":form 五绝", ":temp 0.7", ":tones strict", ":seed 3", "春风",
                        ":line 3", ":check", f":save {saved}", ":undo", ":history", ":quit"]) + "\n"
    r = repl(checkpoint, script)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "form 五绝 · rhyme pingshui · tones strict · temp 0.7" in out
    poems = [line for line in out.splitlines() if line.count("，") == 2 and line.endswith("。")]
    first, rewritten = poems[0], poems[1]
    assert first.startswith("春风") and check_poem(first, tones="strict").ok
    a, b = split_verse(first), split_verse(rewritten)
    assert a[:2] == b[:2] and a[3] == b[3]  # only line 3 may change
    assert check_poem(rewritten, tones="strict").ok
    assert "no violations" in out and "平" in out
    assert saved.read_text(encoding="utf-8") == f"一首旧诗\n{rewritten}\n"
    assert "1. " + first in out and "2. " + rewritten in out


def test_pick_then_done(checkpoint):
    r = repl(checkpoint, ":form 七绝\n:pick\n1\n\n:undo\n2\n:done\n:quit\n")
    assert r.exit_code == 0, r.output
    final = [line for line in r.stdout.splitlines() if line.count("，") == 2 and line.endswith("。")][-1]
    assert check_poem(final).ok
    assert "1:" in r.stdout and "%" in r.stdout


def test_bad_commands_keep_the_session_going(checkpoint):
    script = ":temp -1\n:form 九言\n:tones bogus\n:line 9\n:frobnicate\n:save\n:n 0\n春风\n\n"
    r = repl(checkpoint, script)
    assert r.exit_code == 0  # Ctrl-D (end of input) exits 0
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 7, r.stdout
    assert ":temp needs a number > 0" in errors[0] and ":form needs 五绝" in errors[1]
    assert "unknown command :frobnicate" in r.stdout
    assert any(line.startswith("春风") for line in r.stdout.splitlines())  # still writes poems


def test_unknown_characters_and_free_mode(checkpoint):
    r = repl(checkpoint, "鑫\n:mode free\n春\n:quit\n")
    assert "never saw: '鑫'" in r.stdout
    assert any(line.startswith("春") for line in r.stdout.splitlines()[2:])


def test_real_terminal_session(checkpoint, tmp_path):
    """In a pty: prompt, a poem, Ctrl-C during a long generation, Ctrl-D exits with 0."""
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path), OMP_NUM_THREADS="1", TERM="dumb")
    # As a user's shell starts it: with Ctrl-C's default action. A test run started in the
    # background of a script has SIGINT ignored, and children would inherit that.
    spawn = functools.partial(pexpect.spawn, sys.executable,
                              ["-m", "poetgen", "repl", "--checkpoint", str(checkpoint)], env=env,
                              encoding="utf-8", timeout=60,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child = spawn()
    child.expect("poetgen> ")
    child.sendline("春风")
    child.expect("春风[^\r\n]*。")
    child.expect("poetgen> ")
    child.sendline(":n 100")
    child.expect("poetgen> ")
    child.sendline(":form off")
    child.expect("poetgen> ")
    child.sendline(":mode free")
    child.expect("poetgen> ")
    child.sendline(":help")
    child.expect(":pick")
    child.expect("poetgen> ")
    # 100 free texts of 50,000 characters take a while: Ctrl-C cancels and returns to the prompt.
    child.sendline(":max 50000")
    child.expect("poetgen> ")
    child.sendline("春" * 5)
    time.sleep(1.0)
    child.sendintr()
    child.expect("cancelled")
    child.expect("poetgen> ")
    child.sendline(":temp 0.5")
    child.expect("temp 0.5")
    child.expect("poetgen> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # Ctrl-C then at once Ctrl-D, typed before the prompt is back: the terminal is still in
    # canonical mode then, and the end-of-file mark must not be lost when readline starts.
    child = spawn()
    child.expect("poetgen> ")
    for command in (":mode free", ":n 100", ":max 50000"):
        child.sendline(command)
        child.expect("poetgen> ")
    child.sendline("春")
    time.sleep(1.0)
    child.sendintr()
    child.sendeof()
    child.expect("cancelled")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "poetgen" / "history").exists()  # line history persists across sessions


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_lines_and_ctrl_d_typed_while_busy_are_kept():
    """What typed_ahead reads from a terminal in canonical mode (as it is during generation)."""
    master, slave = os.openpty()
    try:
        with open(slave, encoding="utf-8", closefd=False) as stdin:
            assert typed_ahead(stdin) == TypedAhead([])
            os.write(master, ":n 2\n春风\n".encode())
            time.sleep(0.1)
            assert typed_ahead(stdin) == TypedAhead([":n 2", "春风"])
            os.write(master, "半行".encode())  # not a complete line: not readable yet
            time.sleep(0.1)
            assert typed_ahead(stdin) == TypedAhead([])
            os.write(master, b"\n:save p.txt\n\x04")  # ...then Ctrl-D
            time.sleep(0.1)
            assert typed_ahead(stdin) == TypedAhead(["半行", ":save p.txt"], ended=True)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("keys, expected", [
    ("", TypedAhead([])),
    ("春风\r", TypedAhead(["春风"])),  # Enter pressed while readline's raw mode was still on
    (":n 100\r:max 50000\r月", TypedAhead([":n 100", ":max 50000"], unfinished="月")),
    ("a\r\nb\n", TypedAhead(["a", "b"])),
    ("\x04", TypedAhead([], ended=True)),
    (":save x\r\x04:temp 2\r", TypedAhead([":save x"], ended=True)),  # nothing after Ctrl-D
    ("ab\x04c", TypedAhead([], unfinished="abc")),  # Ctrl-D inside a line does not quit
    ("🌙\n", TypedAhead(["🌙"])),
])
def test_parse_typed(keys, expected):
    assert parse_typed(keys) == expected


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
    r = CliRunner().invoke(cli, ["eval", str(checkpoint)])
    assert r.exit_code == 1 and "give a FILE" in r.output

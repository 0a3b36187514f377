import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from poetgen.app.cli import cli

SMALL = ["--hidden-size", "32", "--embed-size", "16", "--num-layers", "1", "--batch-size", "4",
         "--bptt", "16", "--max-steps", "10", "--eval-every", "5", "--seed", "1"]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POETGEN_CHECKPOINT", raising=False)
    return CliRunner()


def test_train_sample_eval_info_end_to_end(runner, corpus_file):
    r = runner.invoke(cli, ["train", str(corpus_file), *SMALL])
    assert r.exit_code == 0, r.output
    assert "val bpc" in r.stderr and "Done: 10 steps" in r.stderr
    run = corpus_file.parent / "checkpoints" / "poems"
    assert {p.name for p in run.iterdir()} == {"best.safetensors", "last.safetensors", "metrics.csv",
                                           ".lock"}  # the run directory's lock (see lm/rundir.py)

    r = runner.invoke(cli, ["sample", "--n", "3", "--seed", "4", "--json", "--prime", "春"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["text"].startswith("春") and row["seed"] == 4 for row in rows)
    again = runner.invoke(cli, ["sample", "--n", "3", "--seed", "4", "--json", "--prime", "春"])
    assert again.stdout == r.stdout

    r = runner.invoke(cli, ["eval", str(run), str(corpus_file), "--json"])
    assert r.exit_code == 0, r.output
    figures = json.loads(r.stdout)
    assert 0 < figures["bpc"] < 6 and figures["chars"] == len(corpus_file.read_text())

    r = runner.invoke(cli, ["info", str(run), "--json"])
    info = json.loads(r.stdout)
    assert info["config"]["hidden_size"] == 32 and info["training"]["step"] == 10

    r = runner.invoke(cli, ["train", str(corpus_file), "--max-steps", "15", "--resume"])
    assert r.exit_code == 0, r.output
    assert "resuming at step 10" in r.stderr and "Done: 15 steps" in r.stderr


def test_config_file_and_flags(runner, corpus_file, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nhidden_size = 24\nembed_size = 8\n[train]\nmax_steps = 4\nbatch_size = 4\nbptt = 8\n'
                   'time_budget = "1m"\neval_every = 2\n')
    r = runner.invoke(cli, ["train", str(corpus_file), "--config", str(cfg), "--hidden-size", "16", "--out", "x"])
    assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(cli, ["info", "x", "--json"]).stdout)
    assert info["config"]["hidden_size"] == 16 and info["config"]["embed_size"] == 8
    assert info["train_config"]["time_budget"] == 60 and info["training"]["step"] == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("hiden_size = 3\n")
    r = runner.invoke(cli, ["train", str(corpus_file), "--config", str(bad)])
    assert r.exit_code == 1 and "unknown setting(s) hiden_size" in r.output
    bad.write_text('hidden_size = "32"\n')  # was a TypeError deep in the model
    r = runner.invoke(cli, ["train", str(corpus_file), "--config", str(bad)])
    assert r.exit_code == 1 and "hidden_size must be an integer, not '32'" in r.output


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"", "empty"),
    (b"   \n\n", "empty or only whitespace"),
    ("好诗\n".encode("gb18030"), "not valid UTF-8 at byte 0 (line 1"),
])
def test_bad_corpus_errors(runner, tmp_path, content, message):
    p = tmp_path / "c.txt"
    if content is not None:
        p.write_bytes(content)
    r = runner.invoke(cli, ["train", str(p), *SMALL])
    assert r.exit_code == 1
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.fixture
def trained(runner, corpus_file):
    r = runner.invoke(cli, ["train", str(corpus_file), *SMALL, "--max-steps", "5"])
    assert r.exit_code == 0, r.output
    return corpus_file.parent / "checkpoints" / "poems" / "best.safetensors"


@pytest.mark.parametrize("args, message", [
    (["--temp", "0"], "--temp needs a number > 0"),
    (["--temp", "-1"], "--temp needs a number > 0"),
    (["--temp", "inf"], "--temp needs a number > 0"),
    (["--top-p", "2"], "--top-p needs a number in (0, 1]"),
    (["--seed", "99999999999999999999999"], "--seed needs a whole number >= 0"),
    (["--acrostic", "春江"], "--acrostic needs --form"),
    (["--form", "七绝", "--acrostic", "春a花月"], "--acrostic needs Chinese characters"),
    (["--form", "七绝", "--acrostic", "春江花月夜"], "a 七绝 has 4 lines"),
    (["--beam", "2", "--n", "3", "--form", "五绝"], "ask for at most that many poems"),
    (["--prime", "李白Z"], "never saw: '李' '白' 'Z'"),
    (["--checkpoint", "missing.safetensors"], "no such checkpoint"),
])
def test_bad_sample_arguments(runner, trained, args, message):
    r = runner.invoke(cli, ["sample", *args])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_corrupt_checkpoint_error_and_debug_traceback(runner, trained):
    trained.write_bytes(trained.read_bytes()[:100])
    r = runner.invoke(cli, ["sample", "--checkpoint", str(trained)])
    assert r.exit_code == 1 and "corrupt or truncated" in r.output
    r = runner.invoke(cli, ["--debug", "sample", "--checkpoint", str(trained)])
    assert r.exit_code == 1 and isinstance(r.exception, Exception)
    assert type(r.exception).__name__ == "CheckpointError"


def test_eval_errors(runner, trained, tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    r = runner.invoke(cli, ["eval", str(trained), str(empty)])
    assert r.exit_code == 1 and "empty" in r.output
    r = runner.invoke(cli, ["eval", str(trained), str(tmp_path / "none.txt")])
    assert r.exit_code == 1 and "file not found" in r.output


@pytest.mark.parametrize("flags", [["--softmax", "full", "--tie-weights"], ["--weight-drop", "0.3"]])
def test_train_resume_and_sample_with_other_model_options(runner, corpus_file, flags):
    r = runner.invoke(cli, ["train", str(corpus_file), *SMALL, *flags, "--out", "run"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["train", str(corpus_file), "--max-steps", "12", "--out", "run",
                            "--resume"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["sample", "-c", "run", "--n", "1", "--seed", "0"])
    assert r.exit_code == 0 and r.stdout.strip(), r.output


def test_resume_rejects_model_flags_and_missing_run(runner, corpus_file):
    r = runner.invoke(cli, ["train", str(corpus_file), "--resume", "--out", "nothing-here"])
    assert r.exit_code == 1 and "no such checkpoint" in r.output
    runner.invoke(cli, ["train", str(corpus_file), *SMALL, "--max-steps", "2"])
    r = runner.invoke(cli, ["train", str(corpus_file), "--resume", "--hidden-size", "64"])
    assert r.exit_code == 1 and "keeps the model as it was" in r.output


def test_init_runs_a_second_stage_and_rejects_shape_flags(runner, corpus_file):
    runner.invoke(cli, ["train", str(corpus_file), *SMALL, "--max-steps", "2", "--out", "one"])
    r = runner.invoke(cli, ["train", str(corpus_file), "--init", "one", "--hidden-size", "64",
                            "--out", "two"])
    assert r.exit_code == 1 and "--init keeps the model's shape; drop hidden_size" in r.output
    r = runner.invoke(cli, ["train", str(corpus_file), "--init", "one", "--resume", "--out", "one"])
    assert r.exit_code == 1 and "drop --init" in r.output
    r = runner.invoke(cli, ["train", str(corpus_file), "--init", "one", "--dropout", "0.3",
                            "--weight-drop", "0.2", "--max-steps", "2", "--eval-every", "1",
                            "--out", "two"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["info", "two", "--json"])
    info = json.loads(r.stdout)
    assert info["config"]["dropout"] == 0.3 and info["config"]["hidden_size"] == 32
    assert info["config"]["weight_drop"] == 0.2
    assert info["init"]["from"].endswith("one/best.safetensors") and info["init"]["step"] == 2
    r = runner.invoke(cli, ["info", "two"])
    assert "started from" in r.output


def test_ctrl_c_saves_last_and_exits_130(tmp_path, corpus_file):
    """A real SIGINT to a real process, as a user pressing Ctrl-C would send."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "poetgen", "train", str(corpus_file), "--time-budget", "2m",
            "--hidden-size", "32", "--embed-size", "16", "--batch-size", "4", "--bptt", "16",
            "--eval-every", "100000", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 60
    line = ""
    while "Training on" not in line and time.time() < deadline:
        line = proc.stderr.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "Interrupted at step" in rest and "--resume" in rest
    assert (tmp_path / "run" / "last.safetensors").exists()


def test_plot_writes_a_png(runner, trained, tmp_path):
    pytest.importorskip("matplotlib")
    r = runner.invoke(cli, ["plot", str(trained.parent), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two stages drawn one after the other (the same run twice stands in for stage 2).
    r = runner.invoke(cli, ["plot", str(trained.parent), str(trained.parent), "-o", str(tmp_path / "d.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(cli, ["plot", str(tmp_path)])
    assert r.exit_code == 1 and "metrics.csv: not found" in r.output


def test_export_half_precision(runner, trained, tmp_path):
    out = tmp_path / "small.safetensors"
    r = runner.invoke(cli, ["export", str(trained), str(out), "--half"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size < trained.stat().st_size
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).stdout)
    assert info["training"]["step"] == 5
    r = runner.invoke(cli, ["sample", "--checkpoint", str(out), "--seed", "1"])
    assert r.exit_code == 0 and r.stdout.strip()


def test_no_command_shows_help_and_points_to_the_repl(runner):
    r = runner.invoke(cli, [])
    assert r.exit_code == 0 and "Commands:" in r.stdout and "poetgen repl" in r.stdout


# ----------------------------------------------------------------------------------------------
# Integrity and faults, as a user meets them


def test_old_format_checkpoint_works_with_a_note_and_export_rewrites_it(runner, trained, tmp_path):
    from conftest import save_v1
    from poetgen.lm.checkpoint import load_checkpoint

    ck = load_checkpoint(trained)
    old = save_v1(tmp_path / "old.safetensors", ck.model, ck.vocab,
                  {k: ck.meta[k] for k in ("training", "train_config", "init")})
    r = runner.invoke(cli, ["sample", "-c", str(old), "--seed", "1"])
    assert r.exit_code == 0 and r.stdout.strip(), r.output
    assert "note: " in r.stderr and "old checkpoint format (v1)" in r.stderr
    new = tmp_path / "new.safetensors"
    r = runner.invoke(cli, ["export", str(old), str(new)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["info", str(new), "--json"])
    assert r.exit_code == 0 and "note" not in r.stderr
    assert json.loads(r.stdout)["format"] == "poetgen-checkpoint-v2"
    assert json.loads(r.stdout)["training"] == ck.meta["training"]
    again = load_checkpoint(new)
    for k, v in ck.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k


def test_every_command_refuses_a_corrupt_last_and_export_never_re_signs_it(runner, trained,
                                                                          corpus_file, tmp_path):
    """The issue: a weight flip in `last` was accepted by info, sample, eval, export and
    train --init (which never read the training state), and export re-signed it."""
    last = trained.parent / "last.safetensors"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x08
    last.write_bytes(bytes(data))
    out = tmp_path / "exported.safetensors"
    for args in (["info", str(last)], ["sample", "-c", str(last)],
                 ["eval", str(last), str(corpus_file)], ["export", str(last), str(out)],
                 ["train", str(corpus_file), *SMALL, "--init", str(last), "--out", "two"],
                 ["train", str(corpus_file), "--max-steps", "8", "--resume"]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1 and "does not match its checksum" in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert not out.exists()


def test_info_shows_a_run_saved_before_its_first_evaluation(runner, trained, tmp_path):
    from poetgen.lm.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(trained)
    early = save_checkpoint(tmp_path / "early.safetensors", ck.model, ck.vocab,
                            {"training": {"step": 2, "val_bpc": None, "best_val_bpc": None}})
    r = runner.invoke(cli, ["info", str(early)])
    assert r.exit_code == 0, r.output  # was a TypeError formatting None
    assert "val_bpc" in r.stdout and "–" in r.stdout


def test_ctrl_c_during_start_up_exits_130(runner, corpus_file, monkeypatch):
    import poetgen.lm.corpus as corpus

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "read_text", interrupted)  # Ctrl-C while the corpus is read
    r = runner.invoke(cli, ["train", str(corpus_file), *SMALL])
    assert r.exit_code == 130 and "Interrupted." in r.output
    assert "Aborted" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("out", ["afile", "afile/sub"])
def test_out_that_is_or_is_below_a_file_is_one_line(runner, corpus_file, tmp_path, out):
    (tmp_path / "afile").write_text("my notes")
    r = runner.invoke(cli, ["train", str(corpus_file), *SMALL, "--out", out])
    assert r.exit_code == 1 and "afile is a file where a directory is needed" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert (tmp_path / "afile").read_text() == "my notes"


@pytest.mark.parametrize("corpus", ["/dev/zero", "loop.txt"])
def test_corpus_that_is_a_device_or_a_link_loop_is_one_line(runner, tmp_path, corpus):
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    r = runner.invoke(cli, ["train", corpus, *SMALL, "--out", "run"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert ("not a regular file" if corpus == "/dev/zero" else "symbolic link loop") in r.output


def test_two_quick_ctrl_c_exit_130_without_a_traceback(tmp_path, corpus_file):
    """Real signals to a real process: the second press comes while the first one's save and
    exit are under way, wherever that is; the exit is 130 and no traceback is printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "poetgen", "train", str(corpus_file), "--time-budget", "2m",
            "--hidden-size", "32", "--embed-size", "16", "--batch-size", "4", "--bptt", "16",
            "--eval-every", "20", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 60
    line = ""
    while "Training on" not in line and time.time() < deadline:
        line = proc.stderr.readline()
    time.sleep(1.0)  # into the loop (not what the test judges)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    from poetgen.lm.checkpoint import load_checkpoint

    if (tmp_path / "run" / "last.safetensors").exists():
        load_checkpoint(tmp_path / "run" / "last.safetensors")  # whatever was saved is whole

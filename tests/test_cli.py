import json
import os
import signal
import subprocess
import sys
import time

import pytest
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
    assert {p.name for p in run.iterdir()} == {"best.safetensors", "last.safetensors", "metrics.csv"}

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
    while "Training on" not in line and time.time() < deadline:  # said once Ctrl-C is caught
        line = proc.stderr.readline()
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

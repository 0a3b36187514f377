"""Distributed data-parallel training on CPU: 2 processes with gloo, as torchrun runs them.

The workers are started by torch.multiprocessing from a fork server that has imported torch (and
torch._dynamo, which the optimizer imports) once, so each start is fast; they join a process
group through a file. `test_torchrun_cli` runs the command a user types.
"""

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from poetgen.lm.checkpoint import load_checkpoint
from poetgen.lm.config import ModelConfig, TrainConfig
from poetgen.lm.corpus import prepare_text
from poetgen.lm.train import Callbacks, TrainingInterrupted, train

from conftest import TINY_MODEL, TINY_TRAIN, make_poems

TEXT = make_poems(60)
SETTINGS = {**TINY_TRAIN, "max_steps": 12, "eval_every": 4, "min_evals": 1}


def _data():
    data = prepare_text(TEXT, TEXT[:150], TrainConfig())
    return data.train_ids, data.val_ids, data.vocab


def _train(run_dir: Path, dropout: float, resume: bool = False, stop_rank: int | None = None,
           stop_step: int = 6) -> dict:
    """Train the tiny model in this process (whatever its rank); a report of how it ended."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    notes = []

    def on_step(info):
        if rank == stop_rank and info.step == stop_step:  # SIGTERM to this rank alone
            os.kill(os.getpid(), signal.SIGTERM)

    callbacks = Callbacks(on_start=lambda info: notes.append(info["resume_note"]),
                          on_step=on_step)
    ids, val, vocab = _data()
    model = ModelConfig(**TINY_MODEL, dropout=dropout)
    try:
        result = train(ids, val, vocab, model, TrainConfig(**SETTINGS), run_dir, resume=resume,
                       callbacks=callbacks)
        return {"rank": rank, "steps": result.steps, "note": notes[0]}
    except TrainingInterrupted as e:
        return {"rank": rank, "interrupted_at": e.step, "note": notes[0]}


def _worker(rank: int, size: int, rendezvous: str, out: str, kwargs: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=size)
    try:
        report = _train(**kwargs)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Run `_train(**kwargs)` in `size` processes joined by gloo; the reports of every rank."""
    multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", "poetgen.lm.train"])
    counter = iter(range(1000))

    def run(size: int = 2, **kwargs) -> list[dict]:
        work = tmp_path_factory.mktemp(f"launch{next(counter)}")
        tmp.start_processes(_worker, args=(size, str(work / "rendezvous"), str(work), kwargs),
                            nprocs=size, join=True, start_method="forkserver")
        return [json.loads((work / f"rank{r}.json").read_text()) for r in range(size)]
    return run


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(run_dir / "last.safetensors")
    return {k: v for k, v in ck.model.state_dict().items() if not k.startswith("start_")}


def test_two_ranks_train_the_same_weights_as_one_with_the_same_global_batch(launch, tmp_path):
    reports = launch(run_dir=tmp_path / "two", dropout=0.0)
    assert [r["steps"] for r in reports] == [12, 12]
    _train(tmp_path / "one", dropout=0.0)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name
    # ...and they moved: the comparison is not between two untrained models.
    start = load_checkpoint(tmp_path / "one" / "best.safetensors")
    assert not torch.allclose(one["embedding.weight"], torch.zeros_like(one["embedding.weight"]))
    assert start.meta["training"]["world_size"] == 1
    two_meta = load_checkpoint(tmp_path / "two" / "last.safetensors", with_extra=True)
    assert two_meta.meta["training"]["world_size"] == 2
    assert two_meta.extra["train_h"].shape[1] == TINY_TRAIN["batch_size"]  # every stream's state
    # Rank 0 alone logs, and logs the global batch's loss: the one-process run's.
    rows = {name: list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
            for name in ("one", "two")}
    assert [r["step"] for r in rows["two"]] == ["4", "8", "12"]
    for a, b in zip(rows["one"], rows["two"]):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)


def test_sigterm_on_one_rank_stops_both_and_the_resume_ends_where_an_uninterrupted_run_does(
        launch, tmp_path):
    launch(run_dir=tmp_path / "whole", dropout=0.3)
    reports = launch(run_dir=tmp_path / "cut", dropout=0.3, stop_rank=1)
    assert [r["interrupted_at"] for r in reports] == [6, 6]  # rank 0 stopped with rank 1
    saved = load_checkpoint(tmp_path / "cut" / "last.safetensors", with_extra=True)
    assert saved.meta["training"]["step"] == 6
    assert saved.extra["rng_ranks"].shape[0] == 2  # each rank's dropout continues its own stream
    reports = launch(run_dir=tmp_path / "cut", dropout=0.3, resume=True)
    assert [r["steps"] for r in reports] == [12, 12] and reports[0]["note"] is None
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_resume_with_another_number_of_processes_says_what_it_does(launch, tmp_path):
    # Without dropout nothing is random: a one-process run cut at step 6 and resumed by two
    # processes ends where one uninterrupted process does, and the note says so.
    with pytest.raises(TrainingInterrupted):
        def interrupt(info):
            if info.step == 6:
                os.kill(os.getpid(), signal.SIGINT)
        ids, val, vocab = _data()
        train(ids, val, vocab, ModelConfig(**TINY_MODEL, dropout=0.0), TrainConfig(**SETTINGS),
              tmp_path / "cut", callbacks=Callbacks(on_step=interrupt))
    reports = launch(run_dir=tmp_path / "cut", dropout=0.0, resume=True)
    assert "saved by 1 process with 2 processes" in reports[0]["note"]
    assert "ends as it would have" in reports[0]["note"]
    _train(tmp_path / "whole", dropout=0.0)
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    for name in whole:
        assert torch.allclose(whole[name], resumed[name], rtol=1e-4, atol=1e-6), name


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused():
    from poetgen.errors import ConfigError
    from poetgen.lm.distributed import World

    assert World(1, 2).streams(4) == range(2, 4)
    with pytest.raises(ConfigError, match="multiple of 3"):
        World(0, 3).streams(4)


def test_torchrun_cli(tmp_path):
    """The command a user types: rank 0 alone prints and writes; every process exits cleanly."""
    (tmp_path / "poems.txt").write_text(TEXT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "poetgen", "train", str(tmp_path / "poems.txt"), "--out", str(tmp_path / "run"),
         "--device", "cpu", "--max-steps", "4", "--eval-every", "2", "--batch-size", "4",
         "--bptt", "16", "--hidden-size", "32", "--embed-size", "16", "--seed", "0",
         "--min-evals", "1"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Done: 4 steps") == 1, done.stderr[-3000:]
    assert done.stderr.count("Training on cpu × 2 processes") == 1
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [  # rank 0 held the lock
        ".lock", "best.safetensors", "last.safetensors", "metrics.csv"]

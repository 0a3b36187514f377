"""Training throughput with 1 and with N processes (torchrun, gloo on CPU) at the same global batch.

    python bench/ddp_scaling.py CORPUS [--procs 1,2] [--steps 300] [--set hidden_size=256 ...]

For each process count it runs the command a user types,

    torchrun --standalone --nproc-per-node N -m poetgen train CORPUS --max-steps STEPS ...

with one thread per process (torchrun's default; `--threads` sets it), plus one process with
as many threads as the largest N (the other way to use N cores), and reports the training
throughput: characters of the global batch per second of training time (the `elapsed` of the
last checkpoint, which leaves out evaluation and saving), per process, and the speed-up over one
process. The machine's load average before and after each run is printed with it: on a shared
machine the figures move with the other jobs. One JSON line per run. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(corpus: str, procs: int, threads: int, steps: int, extra: list[str], out: Path) -> dict:
    train = ["-m", "poetgen", "train", corpus, "--out", str(out), "--max-steps", str(steps),
             "--eval-every", str(steps), "--min-evals", "1", "--device", "cpu", *extra]
    if procs > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(procs), *train]
    else:
        command = [sys.executable, *train, "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    from poetgen.lm.checkpoint import read_meta

    meta = read_meta(out / "last.safetensors")
    cfg, training = meta["train_config"], meta["training"]
    chars = training["step"] * cfg["batch_size"] * cfg["bptt"]
    return {"processes": procs, "threads_per_process": threads, "steps": training["step"],
            "batch_size": cfg["batch_size"], "train_s": round(training["elapsed"], 1),
            "wall_s": round(wall, 1), "chars_per_s": round(chars / training["elapsed"]),
            "chars_per_s_per_process": round(chars / training["elapsed"] / procs),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="a text file or a prepared corpus directory")
    ap.add_argument("--procs", default="1,2", help="process counts to compare")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                    help="a train flag, e.g. --set hidden-size=256 (repeatable)")
    args = ap.parse_args()
    extra = []
    for item in args.set:
        flag, _, value = item.partition("=")
        extra += [f"--{flag}", value]
    counts = [int(n) for n in args.procs.split(",")]
    plan = [(n, 1) for n in counts] + [(1, max(counts))] * (max(counts) > 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="poetgen-ddp-") as work:
        for i, (procs, threads) in enumerate(plan):
            row = run(args.corpus, procs, threads, args.steps, extra, Path(work) / f"run{i}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["chars_per_s"]
    print(f"\n{'processes':>9} {'threads':>7} {'chars/s':>9} {'per process':>11} {'speed-up':>8} "
          f"{'load before/after':>17}")
    for r in rows:
        print(f"{r['processes']:>9} {r['threads_per_process']:>7} {r['chars_per_s']:>9,} "
              f"{r['chars_per_s_per_process']:>11,} {r['chars_per_s'] / base:>8.2f} "
              f"{r['load_before']:>8.1f}/{r['load_after']:<8.1f}")


if __name__ == "__main__":
    main()

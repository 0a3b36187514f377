"""poetgen's default training against the char-LSTM anchor (../shared/bench/charlstm_anchor.py)
for the same wall-clock budget on tang_train -> tang_val; prints one JSON line.

    python bench/anchor_bench.py --budget 600 --threads 2              # one after the other
    python bench/anchor_bench.py --budget 180 --threads 1 --parallel   # both at once, 1 thread each
    python bench/anchor_bench.py --budget 180 --parallel --poetgen-args "--dropout 0.1"
    python bench/anchor_bench.py --budget 600 --parallel --versus "--cell gru"  # poetgen vs poetgen

poetgen runs as a user runs it (`poetgen train ... --time-budget`, which counts evaluations) with
OMP_NUM_THREADS set; its figure is the val bpc of best.safetensors (the checkpoint a user gets),
and the last evaluation's is reported beside it. The anchor trains for the budget and then scores
val once (each poem from a primed start state, as poetgen's "lines" reading does). On a machine
shared with other work, --parallel runs both at once so that load falls on both alike; the load
average before and after is in the output. Not run in CI: it takes the budget (twice, in series).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def poetgen_command(args, run_dir: Path, extra: str) -> list[str]:
    return [sys.executable, "-m", "poetgen", "train", str(args.train), "--val", str(args.val),
            "--time-budget", f"{args.budget}s", "--out", str(run_dir), *shlex.split(extra)]


def anchor_command(args) -> list[str]:
    return [sys.executable, str(args.anchor), "--minutes", str(args.budget / 60), "--threads",
            str(args.threads), "--train", str(args.train), "--eval", str(args.val)]


def start(command: list[str], threads: int, log: Path) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    f = log.open("w")
    return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT), time.time()


def finish(process: subprocess.Popen, started: float, log: Path) -> float:
    if process.wait() != 0:
        sys.exit(f"{' '.join(map(str, process.args))} failed; see {log}")
    return time.time() - started


def poetgen_figures(run_dir: Path, log: Path, wall: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from poetgen.lm.checkpoint import read_meta

    best, last = read_meta(run_dir / "best.safetensors"), read_meta(run_dir / "last.safetensors")
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    speeds = sorted(float(r.split(",")[5]) for r in rows if float(r.split(",")[5]) > 0)
    return {"val_bpc": round(best["training"]["best_val_bpc"], 4),
            "val_bpc_last": round(last["training"]["val_bpc"], 4),
            "best_step": best["training"]["step"], "steps": last["training"]["step"],
            "epochs": round(last["training"]["epochs"], 2),
            "chars_per_s": round(speeds[len(speeds) // 2]) if speeds else None,
            "wall_s": round(wall, 1), "config": {**best["config"], **best["train_config"]}}


def anchor_figures(log: Path, wall: float) -> dict:
    line = [ln for ln in log.read_text().splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    return {"val_bpc": result["eval_bpc"], "chars_per_s": result["train_chars_per_s"],
            "steps": result["steps"], "epochs": result["epochs"], "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600, help="wall-clock seconds each (default 600)")
    ap.add_argument("--threads", type=int, default=2, help="threads each (default 2)")
    ap.add_argument("--parallel", action="store_true", help="run both at once instead of in turn")
    ap.add_argument("--poetgen-args", default="", help="extra `poetgen train` flags, e.g. '--dropout 0.1'")
    ap.add_argument("--versus", default=None,
                    help="compare with poetgen run with these flags instead of the anchor")
    ap.add_argument("--train", type=Path, default=SHARED / "corpora" / "tang_train.txt")
    ap.add_argument("--val", type=Path, default=SHARED / "corpora" / "tang_val.txt")
    ap.add_argument("--anchor", type=Path, default=SHARED / "bench" / "charlstm_anchor.py")
    ap.add_argument("--out", type=Path, default=None, help="folder for runs and logs (default: temporary)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="poetgen-anchor-"))
    out.mkdir(parents=True, exist_ok=True)
    a_dir, b_dir = out / "poetgen", out / "versus"
    a_log, b_log = out / "poetgen.log", out / ("versus.log" if args.versus is not None else "anchor.log")
    a_cmd = poetgen_command(args, a_dir, args.poetgen_args)
    b_cmd = poetgen_command(args, b_dir, args.versus) if args.versus is not None else anchor_command(args)
    load = [round(os.getloadavg()[0], 2)]
    if args.parallel:
        a, b = start(a_cmd, args.threads, a_log), start(b_cmd, args.threads, b_log)
        a_wall, b_wall = finish(*a, a_log), finish(*b, b_log)
    else:
        a_wall = finish(*start(a_cmd, args.threads, a_log), a_log)
        load.append(round(os.getloadavg()[0], 2))
        b_wall = finish(*start(b_cmd, args.threads, b_log), b_log)
    load.append(round(os.getloadavg()[0], 2))
    mine = poetgen_figures(a_dir, a_log, a_wall)
    other = poetgen_figures(b_dir, b_log, b_wall) if args.versus is not None else anchor_figures(b_log, b_wall)
    name = "versus" if args.versus is not None else "anchor"
    print(json.dumps({
        "label": args.label, "budget_s": args.budget, "threads": args.threads,
        "parallel": args.parallel, "poetgen_args": args.poetgen_args,
        **({"versus_args": args.versus} if args.versus is not None else {}),
        "poetgen_val_bpc": mine["val_bpc"], f"{name}_val_bpc": other["val_bpc"],
        "difference": round(mine["val_bpc"] - other["val_bpc"], 4),
        "load_average": load, "cpus": os.cpu_count(), "poetgen": mine, name: other,
        "logs": str(out),
    }))


if __name__ == "__main__":
    main()

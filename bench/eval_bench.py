"""Evaluation speed: today's stream reading (batch 1, state carried) against lines scored alone
from the start state in length-sorted batches, on the same model and file; one JSON line.

    python bench/eval_bench.py [CHECKPOINT] [FILE] [--repeats N]   # default: `default`, tang_val

Runs the two readings alternately (stream, lines, stream, lines, ...) so that a change in the
machine's load falls on both, and reports each one's median wall seconds, median CPU seconds of
the process (all its threads: on a machine shared with other work this is the steadier figure),
and its bpc.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.evaluate import evaluate_file  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="default")
    parser.add_argument("file", nargs="?", default=str(SHARED / "tang_val.txt"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precision", default="auto",
                        help="auto (as `poetgen eval`: bf16 products where the CPU has them, "
                             "else w8a8 on x86), fp32, bf16, int8 or w8a8, for the lines; the "
                             "stream is the float32 "
                             "baseline (today's reading) whatever this says")
    args = parser.parse_args()
    ck = load_checkpoint(resolve(args.checkpoint))
    precision = {"running": "fp32", "lines": args.precision}
    times = {"running": [], "lines": []}
    cpu = {"running": [], "lines": []}
    bpc = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for kind in times:
            ck.model.inference_precision = precision[kind]
            t, c = time.perf_counter(), time.process_time()
            bpc[kind] = evaluate_file(ck.model, ck.vocab, args.file, kind=kind).bpc
            times[kind].append(time.perf_counter() - t)
            cpu[kind].append(time.process_time() - c)
    stream_s, lines_s = (statistics.median(times[k]) for k in ("running", "lines"))
    stream_cpu, lines_cpu = (statistics.median(cpu[k]) for k in ("running", "lines"))
    print(json.dumps({
        "checkpoint": str(ck.path), "file": args.file, "threads": torch.get_num_threads(),
        "precision": args.precision, "text_kind": ck.model.config.text_kind,
        "stream_s": round(stream_s, 2), "stream_bpc": round(bpc["running"], 5),
        "lines_s": round(lines_s, 2), "lines_bpc": round(bpc["lines"], 5),
        "stream_cpu_s": round(stream_cpu, 2), "lines_cpu_s": round(lines_cpu, 2),
        "speedup": round(stream_s / lines_s, 1), "speedup_cpu": round(stream_cpu / lines_cpu, 1),
        "bpc_difference": round(bpc["lines"] - bpc["running"], 5),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()

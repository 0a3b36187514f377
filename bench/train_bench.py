"""Train a configuration on tang_train for a time budget; print one JSON line of figures.

    python bench/train_bench.py                       # the defaults, 10 minutes
    python bench/train_bench.py --budget 180 --set hidden_size=384 --set num_layers=2

Figures: training chars/s (median over the run's 2-second windows), val bpc on tang_val (one
stream, state carried), parameters, and peak resident memory. Not run in CI: it takes minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.config import ModelConfig, TrainConfig  # noqa: E402
from poetgen.lm.corpus import prepare  # noqa: E402
from poetgen.lm.train import Callbacks, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(int(x) for x in text.split(","))
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600, help="training seconds (default 600)")
    ap.add_argument("--train", default=str(SHARED / "tang_train.txt"))
    ap.add_argument("--val", default=str(SHARED / "tang_val.txt"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a ModelConfig/TrainConfig field")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    overrides = dict(s.split("=", 1) for s in args.set)
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    mcfg = ModelConfig(**{k: parse_value(v) for k, v in overrides.items() if k in model_fields})
    tcfg = TrainConfig(**{k: parse_value(v) for k, v in overrides.items() if k not in model_fields},
                       time_budget=args.budget, device="cpu")
    data = prepare(args.train, args.val, tcfg)
    speeds: list[float] = []
    evals: list[tuple[int, float]] = []

    def on_step(info):
        if info.chars_per_s and (not speeds or speeds[-1] != info.chars_per_s):
            speeds.append(info.chars_per_s)

    cb = Callbacks(on_step=on_step, on_eval=lambda e: evals.append((e.step, round(e.val_bpc, 4))))
    out = args.out or tempfile.mkdtemp(prefix="poetgen-bench-")
    t0 = time.time()
    result = train(data.train_ids, data.val_ids, data.vocab, mcfg, tcfg, out, callbacks=cb)
    print(json.dumps({
        "label": args.label, "overrides": overrides, "budget_s": args.budget,
        "train_chars_per_s": round(statistics.median(speeds)) if speeds else None,
        "val_bpc": round(result.last_val_bpc, 4), "best_val_bpc": round(result.best_val_bpc, 4),
        "steps": result.steps, "parameters": result.parameters,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "wall_s": round(time.time() - t0), "threads": torch.get_num_threads(), "evals": evals,
        "run_dir": out,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()

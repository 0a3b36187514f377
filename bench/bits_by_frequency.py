"""Where a model's bits go: val bits per character split by how often the target character occurs
in the training text. It shows which part of the vocabulary a change helped, e.g. that a
vocabulary cut-off mostly changes the cost of characters never or once seen in training.

    python bench/bits_by_frequency.py CHECKPOINT [CHECKPOINT...] [--train FILE] [--val FILE]

Characters outside a model's vocabulary are scored as its unknown token, as `poetgen eval` does.
"""

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.corpus import read_text  # noqa: E402
from poetgen.lm.evaluate import token_bits  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
BUCKETS = [(0, 0), (1, 1), (2, 4), (5, 9), (10, 49), (50, 999), (1000, math.inf)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--train", default=str(SHARED / "tang_train.txt"))
    parser.add_argument("--val", default=str(SHARED / "tang_val.txt"))
    parser.add_argument("--json", action="store_true", help="one JSON object per checkpoint")
    args = parser.parse_args()
    counts = Counter(read_text(args.train))
    val = read_text(args.val)
    train_count = torch.tensor([counts[c] for c in val], dtype=torch.float64)
    for spec in args.checkpoints:
        ck = load_checkpoint(resolve(spec))
        bits = token_bits(ck.model, ck.vocab, torch.tensor(ck.vocab.encode(val)))
        rows = []
        for lo, hi in BUCKETS:
            sel = (train_count >= lo) & (train_count <= hi)
            n = int(sel.sum())
            rows.append({"train_count": f"{lo}" if lo == hi else f"{lo}+" if hi == math.inf
                         else f"{lo}-{hi}", "tokens": n, "share": n / len(val),
                         "bits_each": float(bits[sel].mean()) if n else 0.0,
                         "bpc_part": float(bits[sel].sum()) / len(val)})
        result = {"checkpoint": str(ck.path), "val_bpc": float(bits.sum()) / len(val),
                  "vocabulary": len(ck.vocab), "buckets": rows}
        if args.json:
            print(json.dumps(result))
            continue
        print(f"{result['checkpoint']}: val bpc {result['val_bpc']:.4f}, "
              f"vocabulary {result['vocabulary']:,}")
        print(f"  {'train count':>11} {'tokens':>7} {'share':>7} {'bits each':>9} {'bpc part':>8}")
        for r in rows:
            print(f"  {r['train_count']:>11} {r['tokens']:>7,} {r['share']:>7.2%} "
                  f"{r['bits_each']:>9.2f} {r['bpc_part']:>8.4f}")


if __name__ == "__main__":
    main()

"""What each inference precision costs in quality: val bpc of one checkpoint with its CPU
products in float32, bfloat16 and int8 weights (poetgen/lm/inference.py), each at every batch
size, read poem by poem as `poetgen eval` reads them; one JSON line.

    python bench/precision_bpc.py [CHECKPOINT] [FILE]     # default: `default`, tang_val

`auto` mixes the last two (int8 up to 4 rows, bf16 above), so its cost is at most theirs.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.evaluate import evaluate_file  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def main():
    ck = load_checkpoint(resolve(sys.argv[1] if len(sys.argv) > 1 else "default"))
    path = sys.argv[2] if len(sys.argv) > 2 else str(SHARED / "tang_val.txt")
    figures = {"checkpoint": str(ck.path), "file": path}
    for precision in ("fp32", "bf16", "int8"):
        ck.model.inference_precision = precision
        start = time.process_time()
        figures[f"{precision}_bpc"] = round(evaluate_file(ck.model, ck.vocab, path).bpc, 5)
        figures[f"{precision}_cpu_s"] = round(time.process_time() - start, 1)
    for precision in ("bf16", "int8"):
        figures[f"{precision}_cost"] = round(figures[f"{precision}_bpc"] - figures["fp32_bpc"], 5)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

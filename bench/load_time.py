"""How long loading a checkpoint takes, and how much of it the whole-file SHA-256 is.

    python bench/load_time.py                    # the bundled model
    python bench/load_time.py checkpoints/RUN/last.safetensors

Prints one JSON line: file size, median and minimum of 7 loads (checksum, header checks, shapes
on the meta device, tensors, model), and the median of 7 SHA-256 passes over the same bytes. One
thread, after one warm-up load (imports, page cache). Not run in CI.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    path = resolve(sys.argv[1] if len(sys.argv) > 1 else "default")
    load_checkpoint(path)
    loads, hashes = [], []
    data = path.read_bytes()
    for _ in range(7):
        t = time.perf_counter()
        load_checkpoint(path)
        loads.append(time.perf_counter() - t)
        t = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        hashes.append(time.perf_counter() - t)
    print(json.dumps({"checkpoint": str(path), "mb": round(len(data) / 1e6, 1),
                      "load_ms_median": round(1000 * statistics.median(loads)),
                      "load_ms_min": round(1000 * min(loads)),
                      "sha256_ms_median": round(1000 * statistics.median(hashes), 1)}))


if __name__ == "__main__":
    main()

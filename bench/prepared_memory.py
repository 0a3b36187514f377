"""Peak anonymous memory of training on a prepared (memory-mapped) corpus, against corpus size.

    nice -n 19 python bench/prepared_memory.py --sizes 100M,1G --text-up-to 100M

For each size it writes a synthetic poem corpus of that many bytes (UTF-8 Chinese, ~6,000
characters with a Zipf-like frequency, 七绝-shaped lines), encodes it with `corpus encode` (a
fixed small --val file, so that evaluation costs the same at every size), and trains the same
small model for --steps steps on it, each in a fresh process that samples its own
/proc/self/status (RssAnon, RssFile, VmHWM) every 10 ms and at every step. Corpora up to
--text-up-to are also trained from the text file, the in-memory path, for comparison.

RssAnon is the figure that matters: pages of the mapped id file count in RSS once read (RssFile),
but the kernel can drop them at any time; anonymous memory cannot be dropped. Prints one JSON line
per run and a table. Not run in CI: it writes gigabytes and takes minutes. Files go to --workdir
(default: a temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POEM_CHARS = 32  # 4 lines of 7 characters with ，。，。 and a newline


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """About `size` bytes of poem-shaped lines over ~6,000 Han characters (Zipf-like)."""
    rng = np.random.default_rng(seed)
    alphabet = np.arange(0x4E00, 0x4E00 + 6000, dtype=np.uint32)
    weights = 1.0 / np.arange(1, len(alphabet) + 1)
    weights /= weights.sum()
    poem_bytes = 28 * 3 + 4 * 3 + 1  # 28 Han + 4 marks (3 bytes each in UTF-8) + newline
    written = 0
    with path.open("wb") as f:
        while written < size:
            n = min(100_000, (size - written) // poem_bytes + 1)
            poems = rng.choice(alphabet, size=(n, POEM_CHARS), p=weights).astype(np.uint32)
            for column, mark in ((7, "，"), (15, "。"), (23, "，"), (31, "。")):
                poems[:, column] = ord(mark)
            poems = np.concatenate([poems, np.full((n, 1), ord("\n"), np.uint32)], axis=1)
            data = poems.tobytes().decode("utf-32-le").encode("utf-8")
            f.write(data)
            written += len(data)


# --------------------------------------------------------------------------------------------
# Child processes: one measured job each


class MemorySampler:
    """Peak RssAnon / RssFile / VmHWM of this process (kB), sampled by a thread and on demand."""

    FIELDS = ("RssAnon", "RssFile", "VmHWM")

    def __init__(self, interval: float = 0.01):
        self.peak = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def mb(self) -> dict:
        return {f"peak_{k}_mb": round(v / 1024, 1) for k, v in self.peak.items()}


def child_encode(text: Path, val: Path, out: Path) -> dict:
    from poetgen.lm.config import TrainConfig
    from poetgen.lm.prepared import encode_corpus

    with MemorySampler() as memory:
        t0 = time.perf_counter()
        report = encode_corpus([text], out, TrainConfig(), val_path=val)
        seconds = time.perf_counter() - t0
    return {"job": "encode", "tokens": report.tokens["train"], "dtype": report.dtype,
            "seconds": round(seconds, 1), **memory.mb()}


def child_train(corpus: Path, val: Path, out: Path, steps: int) -> dict:
    import torch

    from poetgen.lm.config import ModelConfig, TrainConfig
    from poetgen.lm.prepared import load_training_data
    from poetgen.lm.train import Callbacks, train

    config = TrainConfig(max_steps=steps, time_budget=0, eval_every=steps, device="cpu",
                         sample_chars=20)
    speeds = []
    with MemorySampler() as memory:
        t0 = time.perf_counter()
        data = load_training_data(corpus, val, config)
        load_s = time.perf_counter() - t0

        def on_step(info):
            memory.sample()
            if info.chars_per_s:
                speeds.append(info.chars_per_s)

        result = train(data.train_ids, data.val_ids, data.vocab, ModelConfig(), config, out,
                       callbacks=Callbacks(on_step=on_step))
        seconds = time.perf_counter() - t0
    return {"job": "train", "path": "prepared" if corpus.is_dir() else "text",
            "train_tokens": len(data.train_ids), "steps": result.steps,
            "load_s": round(load_s, 1), "seconds": round(seconds, 1),
            "chars_per_s": round(float(np.median(speeds))) if speeds else None,
            "threads": torch.get_num_threads(), **memory.mb()}


# --------------------------------------------------------------------------------------------


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100M,1G", help="corpus sizes in bytes (K, M, G)")
    ap.add_argument("--text-up-to", default="100M",
                    help="also train from the text file for sizes up to this (0 = never)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per run")
    ap.add_argument("--workdir", default=None, help="where the corpora go (kept if given)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:  # a measured job, in its own process
        job, *rest = args.child
        if job == "encode":
            report = child_encode(Path(rest[0]), Path(rest[1]), Path(rest[2]))
        else:
            report = child_train(Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3]))
        print(json.dumps(report))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="poetgen-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    val = work / "val.txt"
    write_corpus(val, 100_000, seed=1)
    rows = []
    try:
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            text = work / f"corpus-{size_text}.txt"
            t0 = time.perf_counter()
            write_corpus(text, size)
            print(f"# wrote {text} ({text.stat().st_size:,} bytes) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
            prepared = work / f"corpus-{size_text}"
            runs = [run_child("encode", str(text), str(val), str(prepared)),
                    run_child("train", str(prepared), str(val), str(work / f"run-{size_text}-p"),
                              str(args.steps))]
            if size <= parse_size(args.text_up_to or "0"):
                runs.append(run_child("train", str(text), str(val),
                                      str(work / f"run-{size_text}-t"), str(args.steps)))
            for r in runs:
                r["corpus_bytes"] = text.stat().st_size
                print(json.dumps(r), flush=True)
                rows.append(r)
            text.unlink()  # keep the disk free for the next size
            shutil.rmtree(prepared, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'corpus':>10} {'job':>16} {'tokens':>12} {'RssAnon MB':>11} {'RssFile MB':>11} "
          f"{'seconds':>8}")
    for r in rows:
        job = r["job"] + (f" ({r['path']})" if "path" in r else "")
        tokens = r.get("train_tokens", r.get("tokens"))
        print(f"{r['corpus_bytes'] / 2**20:>8.0f}MB {job:>16} {tokens:>12,} "
              f"{r['peak_RssAnon_mb']:>11.1f} {r['peak_RssFile_mb']:>11.1f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    main()

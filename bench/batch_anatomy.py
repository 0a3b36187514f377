"""What bounds a batch's sampling step: chars/s with the real products, with every product but
the LSTM's gates made free, and with every product made free.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/batch_anatomy.py [CHECKPOINT] [--rows 64]

Prints one JSON line. A "free" product returns a copy of the one output it computed at its first
call (no weights read, no arithmetic), so `gates_only` is the speed the batch would have if the
projection and the softmax's products cost nothing, and `no_products` what the rest of the step
(gate nonlinearities, log-softmax, drawing, Python) allows by itself. Dividing the code before
the CPU work's batch speed (bench/sample_bench.py in a worktree of 23e8895, fp32) into these
bounds what any faster product for those layers could give. For an LSTM checkpoint with an
adaptive softmax.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.inference import product_kind  # noqa: E402
from poetgen.lm.sample import generate  # noqa: E402


class Free:
    """A product that computes its output once, at its first call, and returns copies after."""

    def __init__(self, product):
        self.product, self.out = product, None
        self.kind, self.input_dtype = product.kind, product.input_dtype

    def __call__(self, x):
        if self.out is None:
            self.out = self.product(x)
        return self.out.clone()


def chars_per_s(model, vocab, rows: int, chars: int) -> float:
    """Free sampling of `rows` texts of `chars` characters: chars/s, median of 5."""
    generate(model, vocab, n=rows, max_chars=20, seed=0, stop_at_newline=False)  # the copies
    times = []
    for _ in range(5):
        start = time.perf_counter()
        generate(model, vocab, n=rows, max_chars=chars, seed=0, stop_at_newline=False)
        times.append(time.perf_counter() - start)
    return round(rows * chars / statistics.median(times))


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--chars", type=int, default=200)
    args = parser.parse_args()
    ck = load_checkpoint(resolve(args.checkpoint))
    model, vocab = ck.model.eval(), ck.vocab
    model.inference_precision = "auto"
    kind = product_kind("auto", args.rows)
    figures = {"checkpoint": str(ck.path), "threads": torch.get_num_threads(), "rows": args.rows,
               "kind": kind, "chars_per_s": {"real": chars_per_s(model, vocab, args.rows,
                                                                 args.chars)}}
    layers = model._rnn_copies.get(model.lstm, kind)
    adaptive = model._adaptive_copies.get(model.adaptive, kind)
    if layers is None:
        raise SystemExit(f"{kind} products fall back to nn.LSTM on this CPU: nothing to fake")
    for layer in layers:
        layer.project = Free(layer.project) if layer.project is not None else None
    adaptive.first = Free(adaptive.first)
    adaptive.seconds = [Free(p) for p in adaptive.seconds]
    figures["chars_per_s"]["gates_only"] = chars_per_s(model, vocab, args.rows, args.chars)
    for layer in layers:
        layer.gates = Free(layer.gates)
    figures["chars_per_s"]["no_products"] = chars_per_s(model, vocab, args.rows, args.chars)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

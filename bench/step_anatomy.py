"""Where a one-row sampling step's time goes: the products, and what they do to everything else.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/step_anatomy.py [CHECKPOINT]   # default: bundled

Prints one JSON line. `stream_us_per_char` is one free stream (as bench/sample_bench.py, under
`auto`) with the real products, with every product replaced by a copy of its result (`fake`),
with only the gate product replaced (`fake_gates`), and with every product replaced but a plain
4 MB read where the gate product was (`fake_plus_4mb_read`; `read_4mb_alone_us` is that read
by itself, in a loop). `after_product_us` times small operations run right after the gate
product and right after nothing: the slowdown the products' weight streaming causes. For an
LSTM checkpoint with an adaptive softmax, on an x86 CPU where `auto` takes int8 for one row
(AVX2 or AVX-512), which is what it fakes.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm import inference  # noqa: E402
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.sample import generate  # noqa: E402


class Replay:
    """A product that returns a copy of one output it computed once: no weights are read."""

    def __init__(self, product, width: int, before=None):
        self.kind, self.before = product.kind, before
        with inference.onednn():
            self.out = product(torch.randn(1, width).to(torch.bfloat16))

    def __call__(self, x):
        if self.before is not None:
            self.before()
        return self.out.clone()


def stream_us(model, vocab, replace: str, big: torch.Tensor) -> float:
    """µs per character of one free stream of 200, median of 5, with `replace` products faked."""
    lstm = model._rnn_copies.get(model.lstm, "int8")[0]
    adaptive = model._adaptive_copies.get(model.adaptive, "int8")
    saved = (lstm.gates, lstm.project, adaptive.first, adaptive.seconds)
    if replace != "none":
        lstm.gates = Replay(lstm.gates, lstm.gates.weight.size(1),
                            before=big.sum if replace == "all_plus_read" else None)
    if replace in ("all", "all_plus_read"):
        lstm.project = Replay(lstm.project, lstm.project.weight.size(1))
        adaptive.first = Replay(adaptive.first, adaptive.first.weight.size(1))
        adaptive.seconds = [Replay(p, p.weight.size(1)) for p in adaptive.seconds]
    try:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            generate(model, vocab, n=1, max_chars=200, seed=0, stop_at_newline=False)
            times.append(time.perf_counter() - start)
        return round(statistics.median(times) / 200 * 1e6, 1)
    finally:
        lstm.gates, lstm.project, adaptive.first, adaptive.seconds = saved


def after_product_us(gates, repeats: int = 2000) -> dict:
    """Small operations timed right after the gate product and right after nothing."""
    x = torch.randn(1, gates.weight.size(1)).to(torch.bfloat16)
    bias, a, b = torch.randn(gates.weight.size(0)), torch.randn(1, 1536), torch.randn(1, 1536)
    ops = {"add_bias": lambda g: g.float().add_(bias), "mul": lambda g: a * b,
           "tanh": lambda g: torch.tanh(a)}
    result = {}
    with inference.onednn():
        g = gates(x)  # (1, 4H) bfloat16, what the bias is added to
        for after in ("gate_product", "nothing"):
            for name, op in ops.items():
                total = 0.0
                for i in range(repeats + 50):
                    if after == "gate_product":
                        gates(x)
                    start = time.perf_counter()
                    op(g)
                    if i >= 50:
                        total += time.perf_counter() - start
                result[f"{name}_after_{after}"] = round(total / repeats * 1e6, 1)
    return result


@torch.no_grad()
def main():
    ck = load_checkpoint(resolve(sys.argv[1] if len(sys.argv) > 1 else None))
    model, vocab = ck.model.eval(), ck.vocab
    model.inference_precision = "auto"
    generate(model, vocab, n=1, max_chars=20, seed=0)  # makes the copies
    big = torch.randn(1024 * 1024)  # 4 MB
    for _ in range(20):
        big.sum()
    start = time.perf_counter()
    for _ in range(500):
        big.sum()
    read_us = (time.perf_counter() - start) / 500 * 1e6
    gates = model._rnn_copies.get(model.lstm, "int8")[0].gates
    print(json.dumps({
        "checkpoint": str(ck.path), "threads": torch.get_num_threads(),
        "stream_us_per_char": {label: stream_us(model, vocab, replace, big) for label, replace in
                               (("real", "none"), ("fake", "all"), ("fake_gates", "gates"),
                                ("fake_plus_4mb_read", "all_plus_read"))},
        "read_4mb_alone_us": round(read_us, 1),
        "after_product_us": after_product_us(gates),
    }))


if __name__ == "__main__":
    main()

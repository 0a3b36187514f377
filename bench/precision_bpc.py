"""What each inference precision costs in quality: val bpc of one checkpoint with its CPU
products in float32, bfloat16 and int8 weights, and w8a8 (int8 weights and activations for the
LSTM's gates, where PyTorch has FBGEMM's dynamic product) (poetgen/lm/inference.py), each at
every batch size; one JSON line. Two readings, poem by poem: as `poetgen eval` scores (`*_bpc`:
the LSTM's copies, the adaptive softmax's own target-only path), and from the whole
distribution that sampling draws from (`*_sampling_bpc`: model.log_probs, the softmax's copies
too).

    python bench/precision_bpc.py [CHECKPOINT] [FILE]     # default: `default`, tang_val

`auto` mixes them (int8 up to 4 rows; above, bf16, w8a8 or fp32), so its cost is at most theirs.
FBGEMM picks its kernels by the CPU, not by ATEN_CPU_CAPABILITY: FBGEMM_ENABLE_INSTRUCTIONS=AVX2
stands in for a CPU without AVX-512 there.
"""

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.evaluate import evaluate_file  # noqa: E402
from poetgen.lm.inference import w8a8_kernel  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@torch.no_grad()
def sampling_bpc(model, vocab, path, batch=64):
    """Bits per character of each line of `path` read from the start state, scored by
    model.log_probs (as sampling sees the distribution); lines batched by length."""
    lines = [torch.tensor(vocab.encode(line + "\n"))
             for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    lines.sort(key=len)
    nats = chars = 0
    model.eval()
    for start in range(0, len(lines), batch):
        group = lines[start : start + batch]
        T, B = max(map(len, group)), len(group)
        x = torch.zeros(T, B, dtype=torch.long)
        for j, ids in enumerate(group):
            x[: len(ids), j] = ids
        outputs, _ = model(x, model.start_state(B))
        inputs = torch.cat([model.start_output(B)[None], outputs[:-1]])  # (T, B, P)
        logp = model.log_probs(inputs).gather(-1, x[..., None]).squeeze(-1)  # (T, B)
        scored = torch.arange(T)[:, None] < torch.tensor([len(ids) for ids in group])[None]
        nats -= float(logp[scored].sum(dtype=torch.float64))
        chars += int(scored.sum())
    return nats / chars / math.log(2)


def main():
    ck = load_checkpoint(resolve(sys.argv[1] if len(sys.argv) > 1 else "default"))
    path = sys.argv[2] if len(sys.argv) > 2 else str(SHARED / "tang_val.txt")
    figures = {"checkpoint": str(ck.path), "file": path}
    reduced = ("bf16", "int8", "w8a8") if w8a8_kernel() else ("bf16", "int8")
    for precision in ("fp32", *reduced):
        ck.model.inference_precision = precision
        start = time.process_time()
        figures[f"{precision}_bpc"] = round(evaluate_file(ck.model, ck.vocab, path).bpc, 5)
        figures[f"{precision}_cpu_s"] = round(time.process_time() - start, 1)
        figures[f"{precision}_sampling_bpc"] = round(sampling_bpc(ck.model, ck.vocab, path), 5)
    for precision in reduced:
        for what in ("", "sampling_"):
            figures[f"{precision}_{what}cost"] = round(
                figures[f"{precision}_{what}bpc"] - figures[f"fp32_{what}bpc"], 5)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

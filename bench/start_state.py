"""What the poem-start state is worth: val bpc of each poem read alone from zeros, from the
learned start state, and of the whole file as one stream (state carried from poem to poem).

    python bench/start_state.py CHECKPOINT [VAL_FILE]
"""

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.lm.corpus import read_text  # noqa: E402
from poetgen.lm.evaluate import LN2, evaluate_file  # noqa: E402
from poetgen.verse.metrics import mean_logprobs  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def from_zeros(model):
    """A copy of `model` whose poem-start state (and the output it gives) is zeros."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.start_h.zero_()
        twin.start_c.zero_()
        if twin.attention is not None:
            twin.start_out.zero_()
    return twin


def per_poem_bpc(ck, poems, from_zero):
    model = from_zeros(ck.model) if from_zero else ck.model
    means = mean_logprobs(model, ck.vocab, poems)
    lengths = [len(p) + 1 for p in poems]
    return -sum(m * n for m, n in zip(means, lengths)) / sum(lengths) / LN2


def main():
    ck = load_checkpoint(resolve(sys.argv[1] if len(sys.argv) > 1 else None))
    val = sys.argv[2] if len(sys.argv) > 2 else str(SHARED / "tang_val.txt")
    poems = [p for p in read_text(val).splitlines() if p]
    print(json.dumps({
        "checkpoint": str(ck.path), "file": val, "poems": len(poems),
        "per_poem_bpc_zero_state": round(per_poem_bpc(ck, poems, True), 4),
        "per_poem_bpc_start_state": round(per_poem_bpc(ck, poems, False), 4),
        "stream_bpc_carried": round(evaluate_file(ck.model, ck.vocab, val).bpc, 4),
    }))


if __name__ == "__main__":
    main()

"""Sampling speed: characters/s for one stream and for a batch of 64, and the time of one
constrained 七律 with every constraint on (rhyme, tones, acrostic, no-repeat).

    python bench/sample_bench.py [CHECKPOINT] [PRECISION]   # default: the newest under
                                                            # checkpoints/, auto (as `sample`);
                                                            # or fp32, bf16, int8

Prints one JSON line; medians over repeats, of wall seconds and of the process's CPU seconds
(the steadier figure on a machine shared with other work; compare two versions of the code by
running this script in each, alternately, with OMP_NUM_THREADS=1).
"""

import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.lm.checkpoint import load_checkpoint, resolve  # noqa: E402
from poetgen.verse.constrain import PoemSpec, compile_spec, generate_poems  # noqa: E402
from poetgen.lm.sample import generate  # noqa: E402


def timed(fn, repeats=5):
    """Median wall and CPU seconds of `fn()` over `repeats` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main():
    ck = load_checkpoint(resolve(sys.argv[1] if len(sys.argv) > 1 else None))
    ck.model.inference_precision = sys.argv[2] if len(sys.argv) > 2 else "auto"
    m, v = ck.model, ck.vocab
    chars = 200
    one = timed(lambda: generate(m, v, n=1, max_chars=chars, seed=0, stop_at_newline=False))
    batch = timed(lambda: generate(m, v, n=64, max_chars=chars, seed=0, stop_at_newline=False))
    spec = PoemSpec.make("七律", rhyme="pingshui", tones="loose", acrostic="春江花月夜山风雨",
                         no_repeat=True)
    # Compiled specs are kept since c584d54 (`fresh` compiles anew since 1ddc0cd); older code
    # compiled at every call.
    fresh = {"fresh": True} if "fresh" in inspect.signature(compile_spec).parameters else {}
    compile_s = timed(lambda: compile_spec(spec, v, **fresh), repeats=3)
    compiled = compile_spec(spec, v)
    poem = timed(lambda: generate_poems(m, compiled, n=1, seed=0))
    print(json.dumps({
        "checkpoint": str(ck.path), "threads": torch.get_num_threads(),
        "precision": ck.model.inference_precision,
        "free_chars_per_s_1_stream": round(chars / one[0]),
        "free_chars_per_s_batch_64": round(64 * chars / batch[0]),
        "qilv_all_constraints_compile_s": round(compile_s[0], 3),
        "qilv_all_constraints_generate_s": round(poem[0], 3),
        "cpu": {"free_chars_per_cpu_s_1_stream": round(chars / one[1]),
                "free_chars_per_cpu_s_batch_64": round(64 * chars / batch[1]),
                "qilv_compile_cpu_s": round(compile_s[1], 3),
                "qilv_generate_cpu_s": round(poem[1], 3)},
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""The full constrained-decoding sweep: 24,000 poems, every one judged by the independent checker.

2 models (random weights, briefly trained) x 3 temperatures x 4 forms x 1,000 poems, strict tones
and 平水韵; the test suite runs the same sweep with 40 poems per cell. Prints one JSON line per
cell (poems, failures, seconds) and a total; exits 1 if any poem fails the checker.

    python bench/constrain_sweep.py [--poems 1000]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from test_constrain import common_vocab, synthetic_poems  # noqa: E402

from poetgen.lm.config import ModelConfig, TrainConfig  # noqa: E402
from poetgen.lm.corpus import encode_tensor  # noqa: E402
from poetgen.lm.model import CharLSTM  # noqa: E402
from poetgen.lm.train import train  # noqa: E402
from poetgen.verse.check import check_poem  # noqa: E402
from poetgen.verse.constrain import PoemSpec, compile_spec, generate_poems  # noqa: E402


def models(vocab, run_dir: Path) -> dict:
    torch.manual_seed(0)
    random_model = CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=16, hidden_size=32,
                                        cutoffs=())).eval()
    ids = encode_tensor(vocab, synthetic_poems(300))
    cfg = TrainConfig(batch_size=8, bptt=32, lr=1e-2, warmup_steps=5, max_steps=60, time_budget=0,
                      eval_every=60, device="cpu", seed=0, sample_chars=5)
    train(ids, ids[:500], vocab, ModelConfig(embed_size=16, hidden_size=32, cutoffs=()), cfg, run_dir)
    from poetgen.lm.checkpoint import load_checkpoint

    return {"random": random_model, "trained": load_checkpoint(run_dir / "best.safetensors").model}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--poems", type=int, default=1000, help="poems per cell")
    args = parser.parse_args()
    import tempfile

    vocab = common_vocab()
    total = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models(vocab, Path(tmp)).items():
            for temperature in (0.3, 1.0, 2.0):
                for form in ("五绝", "五律", "七绝", "七律"):
                    start = time.perf_counter()
                    compiled = compile_spec(PoemSpec.make(form, rhyme="pingshui", tones="strict"), vocab)
                    poems = generate_poems(model, compiled, n=args.poems, temperature=temperature, seed=1)
                    bad = [p.text for p in poems
                           if not ((r := check_poem(p.text, rhyme="pingshui", tones="strict")).ok
                                   and r.form == form)]
                    total, failed = total + len(poems), failed + len(bad)
                    print(json.dumps({"model": name, "temperature": temperature, "form": form,
                                      "poems": len(poems), "failed": len(bad), "first_failure": bad[:1],
                                      "seconds": round(time.perf_counter() - start, 2)},
                                     ensure_ascii=False), flush=True)
    print(json.dumps({"poems": total, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

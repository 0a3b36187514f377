"""Blind reading: mix generated 七绝 with real ones from tang_val, then score readers' ratings.

    # 1. the generated poems, one per line (any settings), e.g.
    poetgen sample -c default --form 七绝 --n 20 --seed 1 > gen.txt
    # 2. a reading sheet (poems unlabelled, shuffled) and its key, kept apart from the sheet
    python bench/blind_reading.py make gen.txt --sheet SHEET.md --key KEY.json
    # 3. give SHEET.md, and nothing else, to each reader; each answers with a JSON list
    #    [{"id": 1, "fluency": 1-5, "coherence": .., "meaning": .., "poeticness": .., "overall": ..,
    #      "guess": "real" | "generated"}, ...]
    python bench/blind_reading.py score KEY.json reader1.json reader2.json

The real poems are always the same: 20 七绝 of tang_val.txt (never training data) drawn with a
fixed seed from the val file's 七绝, so comparisons across changes are not noise from the real
side. `score` prints one JSON line: per criterion the mean for generated and real poems and
their ratio, and how often the readers told a poem's source correctly.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.verse.check import detect_form  # noqa: E402
from poetgen.verse.prosody import split_verse  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CRITERIA = ("fluency", "coherence", "meaning", "poeticness", "overall")  # THU-PQED's criteria
REAL_SEED, REAL_COUNT = 2026, 20

INSTRUCTIONS = """\
# Reading sheet

Below are {n} classical Chinese quatrains (七言绝句), numbered, in random order. Some were
written by Tang-dynasty poets, some by a computer program. Read each one and rate it from 1
(worst) to 5 (best) on:

- fluency: does each line read as natural classical Chinese?
- coherence: do the lines belong together, with one subject, scene or thread?
- meaning: does the poem say something a reader can understand?
- poeticness: imagery, feeling, craft: is it poetry?
- overall: would you keep this poem?

and guess whether it is "real" (by a Tang poet) or "generated" (by the program).

Answer with one JSON list, one object per poem:
[{{"id": 1, "fluency": 3, "coherence": 2, "meaning": 3, "poeticness": 2, "overall": 2,
  "guess": "generated", "comment": "a few words"}}, ...]

"""


def real_poems(val_file: Path = SHARED / "tang_val.txt") -> list[str]:
    """The fixed real side: REAL_COUNT 七绝 of tang_val, drawn with REAL_SEED."""
    lines = val_file.read_text(encoding="utf-8").splitlines()
    qijue = [p for p in lines if (f := detect_form(split_verse(p))) and f.name == "七绝"]
    return random.Random(REAL_SEED).sample(qijue, REAL_COUNT)


def make(generated_file: Path, sheet: Path, key: Path, seed: int) -> None:
    generated = [p.strip() for p in generated_file.read_text(encoding="utf-8").splitlines() if p.strip()]
    items = [(p, "generated") for p in generated] + [(p, "real") for p in real_poems()]
    random.Random(seed).shuffle(items)
    body = "\n".join(f"{i}. {poem}\n" for i, (poem, _) in enumerate(items, 1))
    sheet.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    sheet.write_text(INSTRUCTIONS.format(n=len(items)) + body, encoding="utf-8")
    val_lines = {p: i for i, p in enumerate((SHARED / "tang_val.txt").read_text(encoding="utf-8").splitlines(), 1)}
    # Real poems are named by their line in tang_val.txt, so the key holds no corpus text.
    key.write_text(json.dumps({str(i): {"source": src, "poem": poem} if src == "generated" else
                               {"source": src, "tang_val_line": val_lines[poem]}
                               for i, (poem, src) in enumerate(items, 1)}, ensure_ascii=False, indent=1),
                   encoding="utf-8")
    print(f"wrote {sheet} ({len(generated)} generated, {REAL_COUNT} real) and {key}")


def score(key_file: Path, answer_files: list[Path]) -> dict:
    key = json.loads(key_file.read_text(encoding="utf-8"))
    ratings: dict[str, dict[str, list[float]]] = {s: {c: [] for c in CRITERIA} for s in ("generated", "real")}
    correct = {"generated": [], "real": []}
    for path in answer_files:
        for answer in json.loads(path.read_text(encoding="utf-8")):
            source = key[str(answer["id"])]["source"]
            for c in CRITERIA:
                ratings[source][c].append(float(answer[c]))
            correct[source].append(answer["guess"] == source)
    figures = {"readers": len(answer_files)}
    for c in CRITERIA:
        g, r = statistics.mean(ratings["generated"][c]), statistics.mean(ratings["real"][c])
        figures[c] = {"generated": round(g, 2), "real": round(r, 2), "ratio": round(g / r, 3)}
    all_correct = correct["generated"] + correct["real"]
    figures["told_apart"] = round(sum(all_correct) / len(all_correct), 3)  # guesses that were right
    figures["generated_caught"] = round(sum(correct["generated"]) / len(correct["generated"]), 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write a reading sheet and its key")
    m.add_argument("generated", type=Path, help="generated poems, one per line")
    m.add_argument("--sheet", type=Path, required=True)
    m.add_argument("--key", type=Path, required=True)
    m.add_argument("--seed", type=int, default=0, help="shuffle seed")
    s = sub.add_parser("score", help="score readers' answers against the key")
    s.add_argument("key", type=Path)
    s.add_argument("answers", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "make":
        make(args.generated, args.sheet, args.key, args.seed)
    else:
        print(json.dumps(score(args.key, args.answers), ensure_ascii=False))


if __name__ == "__main__":
    main()

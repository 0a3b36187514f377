"""How often `poetgen check` agrees with the gold set's verdicts (tests/gold_poems.py).

    python bench/check_gold.py            # the disagreements (first violation), then the agreement
    python bench/check_gold.py --all      # every poem with the checker's verdict and findings

Agreement counts a famous poem as agreeing when the checker's verdict (近体 / 古体 / 出韵) is the
tradition's, and a broken poem when the verdict and the reason are the expected ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gold_poems import BROKEN, GOLD  # noqa: E402

from poetgen.verse.check import check_poem  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="print every poem, not only disagreements")
    args = ap.parse_args()
    agree = 0
    for g in GOLD:
        r = check_poem(g.text)
        ok = r.verdict == g.verdict
        agree += ok
        if args.all or not ok:
            print(f"{'✓' if ok else '✗'} {g.author}《{g.title}》 gold {g.verdict}, checker {r.verdict} "
                  f"{r.reasons or ''}")
            for v in (r.violations + r.warnings if args.all else r.violations[:1]):
                print("     ", v)
    broken_ok = 0
    for b in BROKEN:
        r = check_poem(b.text)
        ok = r.verdict == b.verdict and b.reason in r.reasons
        broken_ok += ok
        if args.all or not ok:
            print(f"{'✓' if ok else '✗'} broken: {b.what}: expected {b.verdict} {b.reason!r}, checker "
                  f"{r.verdict} {r.reasons}")
    print(f"famous poems: {agree}/{len(GOLD)} verdicts agree "
          f"({sum(g.verdict == '近体' for g in GOLD)} regulated, {sum(g.verdict != '近体' for g in GOLD)} not)")
    print(f"broken poems: {broken_ok}/{len(BROKEN)} with the expected verdict and reason")


if __name__ == "__main__":
    main()

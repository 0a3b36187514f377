"""Share of real regulated poems that `poetgen check` accepts, by form.

    python bench/check_accept.py                       # ../shared/corpora/tang_val.txt, loose tones
    python bench/check_accept.py --tones strict --readings common
    PYTHONPATH=/tmp/before python bench/check_accept.py --root /tmp/before   # another checkout

The validation poems are regular in shape (4 or 8 lines of 5 or 7 characters) but not all follow
the tonal rules: many are 古绝 or 古体 in regular shape, so 100% is not the target. The figure is
how much of what Tang poets wrote the checker lets through. It runs against whichever poetgen
`--root` points at (default: this checkout), so the same script measures before and after a change.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=HERE.parent / "shared" / "corpora" / "tang_val.txt")
    ap.add_argument("--root", type=Path, default=HERE, help="the poetgen checkout to measure")
    ap.add_argument("--rhyme", default="pingshui")
    ap.add_argument("--tones", default="loose")
    ap.add_argument("--readings", default=None, help="all | common (checkers that have the option)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))
    from poetgen.verse.check import check_poem

    kw = {"rhyme": args.rhyme, "tones": args.tones}
    if args.readings:
        if "readings" not in inspect.signature(check_poem).parameters:
            sys.exit("this checker has no readings option")
        kw["readings"] = args.readings
    poems = [p for p in args.corpus.read_text(encoding="utf-8").splitlines() if p.strip()]
    total, passed, warned = Counter(), Counter(), Counter()
    verdicts = Counter()
    start = time.perf_counter()
    for p in poems:
        r = check_poem(p, **kw)
        form = r.form or "other"
        total[form] += 1
        passed[form] += r.ok
        warned[form] += r.ok and bool(getattr(r, "warnings", []))
        verdicts[getattr(r, "verdict", "ok" if r.ok else "fail")] += 1
    seconds = time.perf_counter() - start
    print(f"{args.corpus.name}: {len(poems)} poems, checker at {args.root}, {kw}")
    print(f"{'form':<6} {'poems':>6} {'accepted':>9} {'share':>7} {'with warnings':>14}")
    for form in ["五绝", "五律", "七绝", "七律", "other"]:
        if total[form]:
            print(f"{form:<6} {total[form]:>6} {passed[form]:>9} {passed[form] / total[form]:>7.1%} "
                  f"{warned[form]:>14}")
    n, ok = sum(total.values()), sum(passed.values())
    print(f"{'all':<6} {n:>6} {ok:>9} {ok / n:>7.1%} {sum(warned.values()):>14}")
    print("verdicts:", dict(verdicts.most_common()), f"({seconds / n * 1000:.2f} ms per poem)")


if __name__ == "__main__":
    main()

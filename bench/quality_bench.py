"""How decoding settings change the poems: repetition, coherence, 对仗, log-probability, time.

Choosing defaults by measurement, cheaply: `pool` samples many candidates once per (temperature,
repetition penalty), `choose` then ranks them offline for every best-of and ranking weight (the
k candidates of a poem are k consecutive samples, exchangeable), and prints one row per setting
beside the same scores of real poems of tang_val. `time` measures one poem at given settings.

    python bench/quality_bench.py pool --form 七绝 --temps 0.6,0.7,0.8 --penalties 0,1.5,3 \\
        --poems 100 --best-of 8 --out /tmp/pools
    python bench/quality_bench.py choose /tmp/pools/七绝-*.jsonl --best-of 1,4,8 \\
        --coherence 0,1,2 --parallelism 0,1,2
    python bench/quality_bench.py time --form 七绝 --repeats 20 [--best-of 8 ...any setting] [--generation-only]
    python bench/quality_bench.py scores [GENERATED_FILE ...]   # what the scores tell apart
    python bench/quality_bench.py files before/*.txt after/*.txt   # the scores of poem files

The scores are those of poetgen.verse.scores, verse.repeats (重字) and verse.check (重韵); the real poems are the
first --real of the form in ../shared/corpora/tang_val.txt, or --val (never training data).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poetgen.verse.check import detect_form  # noqa: E402
from poetgen.verse.lexicon import bundled  # noqa: E402
from poetgen.verse.prosody import split_verse  # noqa: E402
from poetgen.verse.check import check_poem  # noqa: E402
from poetgen.verse.repeats import repeated_chars  # noqa: E402
from poetgen.verse.scores import coherence, couplet_parallelism, middle_parallelism  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def pool(args) -> None:
    from poetgen.lm.checkpoint import load_checkpoint, resolve
    from poetgen.settings import GenerationSettings
    from poetgen.write import write

    ck = load_checkpoint(resolve(args.checkpoint))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for temp, penalty in itertools.product(_floats(args.temps), _floats(args.penalties)):
        path = out / f"{args.form}-t{temp:g}-p{penalty:g}.jsonl"
        if path.exists():
            continue
        settings = GenerationSettings(form=args.form, temperature=temp, repeat_penalty=penalty,
                                      top_p=args.top_p, seed=args.seed, n=args.poems * args.best_of)
        start = time.perf_counter()
        poems = write(ck.model, ck.vocab, settings)
        rows = [{"text": p.text, "mean_logprob": p.mean_logprob, "temperature": temp,
                 "repeat_penalty": penalty, "top_p": args.top_p} for p in poems]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
        print(f"wrote {path} ({len(rows)} poems, {time.perf_counter() - start:.0f} s)", flush=True)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def scores_of(texts: list[str], lex, copy_lines: set[str] | None = None) -> dict:
    from poetgen.verse.check import distinct_n

    lines = [split_verse(t) for t in texts]
    coh = [c for c in (coherence(ls, lex) for ls in lines) if c is not None]
    par = [p for p in (middle_parallelism(ls, lex) for ls in lines) if p is not None]
    n = max(1, len(texts))
    return {"poems": len(texts),
            "重韵%": round(100 * sum(any(v.startswith("重韵") for v in check_poem(t).violations)
                                     for t in texts) / n, 1),
            "重字%": round(100 * sum(bool(repeated_chars(ls)) for ls in lines) / n, 1),
            "coherence": round(statistics.mean(coh), 3) if coh else None,
            "对仗": round(statistics.mean(par), 3) if par else None,
            "distinct-2": round(distinct_n(texts, 2), 3),
            "copied lines%": None if copy_lines is None else
            round(100 * sum(x in copy_lines for ls in lines for x in ls) / max(1, sum(map(len, lines))), 1)}


def choose(args) -> None:
    lex = bundled()
    form = None
    copy = None
    if args.corpus:
        from poetgen.verse.metrics import verse_lines
        copy = verse_lines(args.corpus)
    for path in args.pools:
        rows = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]
        for r in rows:
            r.update(_cached_scores(r["text"], lex))
        form = detect_form(split_verse(rows[0]["text"])).name
        for k, wc, wp in itertools.product([int(x) for x in args.best_of.split(",")],
                                           _floats(args.coherence), _floats(args.parallelism)):
            if form in ("五绝", "七绝") and wp:
                continue
            chosen = []
            for s in range(0, len(rows) - k + 1, k):
                group = rows[s:s + k]
                chosen.append(max(group, key=lambda r: r["mean_logprob"] + wc * r["coh"] + wp * r["par"]))
            row = {"form": form, "temp": rows[0]["temperature"], "penalty": rows[0]["repeat_penalty"],
                   "top_p": rows[0].get("top_p", 1.0), "best_of": k, "w_coherence": wc,
                   "w_parallelism": wp}
            row |= scores_of([r["text"] for r in chosen], lex, copy)
            row["logprob"] = round(statistics.mean(r["mean_logprob"] for r in chosen), 3)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    if form:
        real = [p for p in Path(args.val).read_text(encoding="utf-8").splitlines()
                if (f := detect_form(split_verse(p))) and f.name == form][:args.real]
        print(json.dumps({"form": form, "source": "tang_val"} | scores_of(real, lex, copy), ensure_ascii=False))


def _cached_scores(text: str, lex) -> dict:
    lines = split_verse(text)
    return {"coh": coherence(lines, lex) or 0.0, "par": middle_parallelism(lines, lex) or 0.0}


def what_scores_tell(args) -> None:
    """Real tang_val poems against the same lines shuffled across poems (and against generated
    poems, one per line in each file given): mean coherence and the AUC (the chance that a real
    poem scores above the other); 对仗 of real 律诗 by couplet."""
    import random

    lex = bundled()
    val = [split_verse(p) for p in Path(args.val).read_text(encoding="utf-8").splitlines()]
    generated = {}
    for path in args.generated:
        for text in Path(path).read_text(encoding="utf-8").splitlines():
            lines = split_verse(text)
            if (f := detect_form(lines)):
                generated.setdefault(f.name, []).append(lines)
    rng = random.Random(0)
    for form in ("五绝", "五律", "七绝", "七律"):
        real = [ls for ls in val if (f := detect_form(ls)) and f.name == form][:args.real]
        pool = [line for ls in real for line in ls]
        shuffled = [[rng.choice(pool) for _ in ls] for ls in real]
        row = {"form": form, "real_poems": len(real)}
        r = [coherence(ls, lex) or 0.0 for ls in real]
        row["coherence_real"] = round(statistics.mean(r), 3)
        for name, others in (("shuffled", shuffled), ("generated", generated.get(form, []))):
            if others:
                o = [coherence(ls, lex) or 0.0 for ls in others]
                row[f"coherence_{name}"] = round(statistics.mean(o), 3)
                row[f"auc_real_vs_{name}"] = round(_auc(r, o), 3)
        if real and len(real[0]) == 8:
            for k, name in enumerate(("first", "second", "third", "last")):
                row[f"对仗_{name}_couplet"] = round(statistics.mean(
                    couplet_parallelism(ls[2 * k], ls[2 * k + 1], lex) for ls in real), 3)
        print(json.dumps(row, ensure_ascii=False))


def files(args) -> None:
    """The scores of files of poems (one per line), each beside tang_val's poems of its form."""
    lex = bundled()
    val = Path(args.val).read_text(encoding="utf-8").splitlines()
    for path in args.files:
        texts = [t for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
        form = detect_form(split_verse(texts[0])).name
        real = [p for p in val if (f := detect_form(split_verse(p))) and f.name == form][:args.real]
        print(json.dumps({"file": path, "form": form} | scores_of(texts, lex), ensure_ascii=False))
        print(json.dumps({"file": "tang_val", "form": form} | scores_of(real, lex), ensure_ascii=False))


def _auc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def timing(args) -> None:
    """Seconds for one poem after the model is loaded (median of --repeats, seeds 0, 1, ...).

    With --generation-only the poem's constraints are compiled once, before the clock starts, and
    that compile is timed on its own: the same split in any version of poetgen (before compiled
    specs were kept, write() compiled at every call)."""
    import torch

    import poetgen.write as write_mod
    from poetgen.lm.checkpoint import load_checkpoint, resolve
    from poetgen.settings import GenerationSettings
    from poetgen.write import write

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ck = load_checkpoint(resolve(args.checkpoint))
    ck.model.inference_precision = args.precision
    load_s = time.perf_counter() - start
    changes = {k: v for k, v in vars(args).items()
               if k in GenerationSettings.options() and v is not None}
    settings = GenerationSettings(**changes)
    compile_s = None
    if args.generation_only:
        spec = settings.poem_spec("")
        fresh = {"fresh": True} if "fresh" in inspect.signature(write_mod.compile_spec).parameters else {}
        write_mod.compile_spec(spec, ck.vocab, **fresh)  # the first loads the prosody tables
        start = time.perf_counter()
        compiled = write_mod.compile_spec(spec, ck.vocab, **fresh)
        compile_s = time.perf_counter() - start
        write_mod.compile_spec = lambda spec_, vocab: compiled  # every poem below is of `spec`
    wall, cpu = [], []
    for seed in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        write(ck.model, ck.vocab, settings.replace(seed=seed))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # On a shared machine wall time counts other programs' turns too; CPU time (all threads of
    # this process) is what the poem itself cost, and equals wall time on an idle machine with
    # one thread.
    print(json.dumps({"form": args.form, "settings": {k: str(v) for k, v in settings.changed().items()},
                      "threads": torch.get_num_threads(), "load_s": round(load_s, 2),
                      "first_wall_s": round(wall[0], 3), "median_wall_s": round(statistics.median(wall), 3),
                      "first_cpu_s": round(cpu[0], 3), "median_cpu_s": round(statistics.median(cpu), 3),
                      "compile_s": None if compile_s is None else round(compile_s, 4),
                      "repeats": args.repeats, "loadavg_1min": round(os.getloadavg()[0], 2),
                      "cpus": os.cpu_count()}, ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pool")
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--form", default="七绝")
    p.add_argument("--temps", default="0.6,0.7,0.8")
    p.add_argument("--penalties", default="0,1.5,3")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--poems", type=int, default=100)
    p.add_argument("--best-of", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="pools")
    c = sub.add_parser("choose")
    c.add_argument("pools", nargs="+")
    c.add_argument("--best-of", default="1,4,8")
    c.add_argument("--coherence", default="0,1,2")
    c.add_argument("--parallelism", default="0")
    c.add_argument("--real", type=int, default=200)
    c.add_argument("--val", default=str(SHARED / "tang_val.txt"), help="real poems to compare")
    c.add_argument("--corpus", default=None, help="training corpus: share of lines copied from it")
    t = sub.add_parser("time")
    t.add_argument("--checkpoint", default="default")
    t.add_argument("--form", default="七绝")
    t.add_argument("--repeats", type=int, default=10)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | int8 (sample's --precision)")
    for flag, typ in (("--best-of", int), ("--temperature", float), ("--repeat-penalty", float),
                      ("--coherence", float), ("--parallelism", float), ("--theme", str),
                      ("--keywords", str), ("--top-p", float), ("--acrostic", str)):
        t.add_argument(flag, type=typ, default=None)
    t.add_argument("--no-repeat", action="store_true", default=None)
    t.add_argument("--generation-only", action="store_true",
                   help="compile the constraints once before the clock starts; time that apart")
    s = sub.add_parser("scores")
    s.add_argument("generated", nargs="*", help="files of generated poems, one per line")
    s.add_argument("--real", type=int, default=300)
    s.add_argument("--val", default=str(SHARED / "tang_val.txt"))
    f = sub.add_parser("files")
    f.add_argument("files", nargs="+")
    f.add_argument("--real", type=int, default=200)
    f.add_argument("--val", default=str(SHARED / "tang_val.txt"))
    args = ap.parse_args()
    {"pool": pool, "choose": choose, "time": timing, "scores": what_scores_tell,
     "files": files}[args.cmd](args)


if __name__ == "__main__":
    main()

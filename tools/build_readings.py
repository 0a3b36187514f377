"""Build poetgen/data/readings.json: which readings of each 多音字 Tang poets really used.

    python tools/build_readings.py ../shared/corpora/tang_train.txt   # never the val split

The rhyme tables list every reading a character ever had: 逢 is in 一东, 二冬 and 三江, 空 is both
平 and 仄. This script counts, over the training corpus, how each character is used:

pingshui
  rhyme positions   in a poem whose couplet-end characters (lines 2, 4, 6, 8) all share exactly
                    one 平水韵 group, every rhyme character (and line 1's, if in that group) is
                    counted as used in that group, and so in its tone;
  template positions in a poem that follows one of its form's tonal templates at every fixed
                    position (characters 2, 4, 6 and each line's last: no character there whose
                    only tone contradicts it), a character at such a position, where every
                    fitting template agrees, is counted as used in that tone (rhyme positions
                    are counted above, not twice).
modern
  every character of every line, read in context with pypinyin's phrase data (no tone sandhi:
  一 and 不 keep their citation tones), counted by the reading pypinyin gives it there.

A reading is *common* when it has at least MIN_SHARE of a character's counted uses and at least
MIN_COUNT of them; with fewer than MIN_EVIDENCE uses in all, nothing is called rare (pingshui:
every reading stays common; modern: the readings seen in context). For 平水韵, tones are decided
first (template and rhyme uses together) and then, within a common tone, groups with rhyme
evidence (MIN_EVIDENCE rhymes or more) keep only their common groups. The entry's `primary` is
the reading with the most uses. Only characters with more than one reading are listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poetgen.verse.prosody import (_SANDHI, PING, ZE, _modern_group, _tone_of_number,  # noqa: E402
                                   citation_reading, detect_form, is_han, line_rhymes, split_verse, templates)

MIN_SHARE = 0.10  # a reading used in fewer than 10% of a character's uses is rare
MIN_COUNT = 2  # ... and so is one used only once
MIN_EVIDENCE = 5  # below this many uses, the corpus says nothing about a character
OUT = Path(__file__).resolve().parents[1] / "poetgen" / "data" / "readings.json"


def _common(uses: Counter) -> list[str]:
    total = sum(uses.values())
    return [k for k, n in uses.most_common() if n >= MIN_COUNT and n / total >= MIN_SHARE]


def pingshui_usage(poems: list[str], index: dict[str, list[str]], level: dict[str, str]):
    tone_of = {c: {level[g] for g in gs} for c, gs in index.items()}
    rhyme_uses: dict[str, Counter] = defaultdict(Counter)
    tone_uses: dict[str, Counter] = defaultdict(Counter)
    stats = Counter()
    for poem in poems:
        lines = split_verse(poem)
        form = detect_form(lines)
        if form is None:
            continue
        stats["poems"] += 1
        last = form.chars_per_line - 1
        # Rhyme: one group shared by every couplet end.
        ends = [lines[i][last] for i in range(form.lines) if line_rhymes(i, False)]
        shared = set(index.get(ends[0], ()))
        for c in ends[1:]:
            shared &= set(index.get(c, ()))
        rhymed = set()
        if len(shared) == 1:
            group = shared.pop()
            stats["rhyme_poems"] += 1
            first = group in index.get(lines[0][last], ())
            for i in (i for i in range(form.lines) if line_rhymes(i, first)):
                c = lines[i][last]
                rhyme_uses[c][group] += 1
                tone_uses[c][level[group]] += 1
                rhymed.add(i)
        # Tones: templates that fit every fixed position.
        fixed = [j for j in range(1, form.chars_per_line, 2)] + [last]
        fitting = []
        for tpl in templates(form):
            if all(not (tone_of.get(lines[i][j]) and tpl.lines[i][j] not in tone_of[lines[i][j]])
                   for i in range(form.lines) for j in fixed):
                fitting.append(tpl)
        if not fitting:
            continue
        stats["template_poems"] += 1
        for i in range(form.lines):
            for j in fixed:
                if j == last and i in rhymed:
                    continue
                needs = {tpl.lines[i][j] for tpl in fitting}
                c = lines[i][j]
                if len(needs) == 1 and c in tone_of:
                    tone_uses[c][needs.pop()] += 1
    table = {}
    for c, groups in index.items():
        if len(groups) < 2 or not (tone_uses.get(c) or rhyme_uses.get(c)):
            continue
        tones, rhymes = tone_uses[c], rhyme_uses[c]
        levels = [t for t in (PING, ZE) if any(level[g] == t for g in groups)]
        common_tones = _common(tones) if sum(tones.values()) >= MIN_EVIDENCE else levels
        common: list[str] = []
        for t in levels:
            if t not in common_tones:
                continue
            mine = [g for g in groups if level[g] == t]
            seen = Counter({g: rhymes[g] for g in mine if rhymes[g]})
            if len(mine) > 1 and sum(seen.values()) >= MIN_EVIDENCE:
                keep = set(_common(seen))
                common += [g for g in mine if g in keep]
            else:
                common += mine
        if not common:  # the evidence rules out every reading's tone: keep the table's
            common = list(groups)
        uses = {t: tones[t] for t in (PING, ZE) if tones[t]} | dict(rhymes.most_common())
        best_tone = max(levels, key=lambda t: tones[t])
        primary = max(common, key=lambda g: (rhymes[g], level[g] == best_tone, -groups.index(g)))
        table[c] = {"common": sorted(common, key=groups.index), "primary": primary, "uses": uses}
    return table, stats


def modern_usage(poems: list[str]):
    from pypinyin import Style, pinyin

    uses: dict[str, Counter] = defaultdict(Counter)
    for poem in poems:
        for line in split_verse(poem):
            if not all(is_han(c) for c in line):
                continue
            for c, r in zip(line, pinyin(line, style=Style.TONE3, neutral_tone_with_five=True)):
                uses[c][citation_reading(c, r[0])] += 1
    table = {}
    for c, seen in uses.items():
        found = pinyin(c, style=Style.TONE3, heteronym=True, strict=True, neutral_tone_with_five=True,
                       errors="ignore")
        syllables = [s for s in (found[0] if found else []) if s[-1:].isdigit() and s not in _SANDHI.get(c, ())]
        kinds = {(_modern_group(s[:-1]), _tone_of_number(s[-1])) for s in syllables}
        if len(kinds) < 2:
            continue  # every reading rhymes and scans alike: nothing to choose
        total = sum(seen.values())
        common = _common(seen) if total >= MIN_EVIDENCE else list(seen)
        table[c] = {"common": common or [seen.most_common(1)[0][0]], "primary": seen.most_common(1)[0][0],
                    "uses": dict(seen.most_common())}
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path, help="the TRAINING corpus, one poem per line")
    ap.add_argument("-o", "--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if "val" in args.corpus.name:
        sys.exit(f"{args.corpus} looks like a validation split; build from the training corpus")
    raw = args.corpus.read_bytes()
    poems = raw.decode("utf-8").splitlines()
    ps_path = Path(__file__).resolve().parents[1] / "poetgen" / "data" / "pingshui.json"
    ps = json.loads(ps_path.read_text("utf-8"))
    level = {g["id"]: g["level"] for g in ps["groups"]}
    pingshui, stats = pingshui_usage(poems, ps["simplified_index"], level)
    modern = modern_usage(poems)
    doc = {
        "format": "poetgen-readings-v1",
        "provenance": {
            "built_by": "tools/build_readings.py", "command": f"python tools/build_readings.py {args.corpus.name}",
            "corpus": args.corpus.name, "corpus_sha256": hashlib.sha256(raw).hexdigest(),
            "corpus_poems": len(poems), "regular_poems": stats["poems"],
            "poems_with_one_rhyme_group": stats["rhyme_poems"],
            "poems_following_a_template": stats["template_poems"],
            "pingshui_sha256": hashlib.sha256(ps_path.read_bytes()).hexdigest(),
            "pypinyin": version("pypinyin"),
            "thresholds": {"min_share": MIN_SHARE, "min_count": MIN_COUNT, "min_evidence": MIN_EVIDENCE},
            "note": "counts of uses in the training split only (never validation); see the script's docstring",
        },
        "pingshui": dict(sorted(pingshui.items())),
        "modern": dict(sorted(modern.items())),
    }
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).replace('},"', '},\n"')
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    rare_p = sum(len(v["common"]) < len(ps["simplified_index"][c]) for c, v in pingshui.items())
    rare_m = sum(len(v["common"]) == 1 for v in modern.values())
    print(f"{args.out}: pingshui {len(pingshui)} characters ({rare_p} with a rare reading), "
          f"modern {len(modern)} characters ({rare_m} with one common reading); {stats['poems']} regular poems, "
          f"{stats['rhyme_poems']} with one rhyme group, {stats['template_poems']} following a template")


if __name__ == "__main__":
    main()

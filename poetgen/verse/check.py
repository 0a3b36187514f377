"""The poem checker: form, rhyme and tones of a poem, with every violation named.

It judges a poem against each tonal template of its form and keeps the one with the fewest
violations (then the fewest warnings), so it is the referee for constrained generation (tests) and
the evaluation metrics. It accepts what Tang poets accepted: the loose rules (一三五不论), the 拗救
forms and the special form of 王力《诗词格律》 (prosody.line_shapes), and a first line borrowing a
neighbouring group (首句借邻韵). Three levels of finding:

    violations  break the rules of regulated verse (出韵, 重韵, 仄韵, 孤平, 三平尾, a tone against
                the template): the poem fails, and its verdict says what it is instead (古体, ...)
    warnings    the poem passes, but leans on something a reader may question: a rare reading
                (one Tang poets seldom used), a 拗 outside the accepted forms, 三仄尾 (on request)
    notes       accepted variants, named so a reader sees why the poem passes (孤平拗救, ...)

Readings: every character may be read in any reading the tables give (`readings="all"`), but one
that relies on a rare reading gets a warning naming it; `readings="common"` admits only the
well-attested readings (poetgen/data/readings.json), so such a poem fails instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from poetgen.verse.lexicon import bundled
from poetgen.verse.scores import couplet_scores
from poetgen.verse.prosody import (NEIGHBOURS, PING, READINGS, TONE_MODES, ZE, Form, LineShape,
                                   Reading, Template, check_choice, detect_form, is_han,
                                   line_rhymes, line_shapes, scheme, split_verse, templates)

__all__ = ["CharInfo", "Report", "check_poem", "detect_form", "distinct_n"]

VERDICTS = {"近体": "regulated verse: form, rhyme and tones as the rules require",
            "古体": "old-style verse: it rhymes, but breaks the tonal rules of regulated verse",
            "出韵": "a rhyme position does not rhyme",
            "押韵": "form and rhyme right; tones not judged (tones off)",
            "非律绝": "not a Tang regular form (4 or 8 lines of 5 or 7 Chinese characters)"}


@dataclass
class CharInfo:
    char: str
    pinyin: str  # the modern reading in this line (pypinyin's phrase data)
    tone: str | None  # 平/仄 as the verdict reads it; where nothing decides, over its common readings
    groups: list[str]  # rhyme groups of its readings under the scheme
    rhyme: bool = False  # at a rhyme position of the chosen template
    required: str | None = None  # 平/仄 the chosen line shape wants here (None: free)
    ok: bool = True
    reading: str | None = None  # the reading the verdict relies on (rhyme group or pinyin), if any
    rare: bool = False  # that reading is a rare one


@dataclass
class Report:
    text: str
    scheme: str
    tones: str
    readings: str = "all"
    form: str | None = None
    template: str | None = None
    rhyme_group: str | None = None
    lines: list[list[CharInfo]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: str = "非律绝"  # a key of VERDICTS
    reasons: list[str] = field(default_factory=list)  # short labels of what made the verdict
    tone_violations: int = 0
    rhyme_ok: bool = False
    parallelism: list[float] = field(default_factory=list)  # 对仗 score per couplet (verse.scores)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def form_ok(self) -> bool:
        return self.form is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@lru_cache(maxsize=4096)
def _line_pinyin(line: str) -> tuple[str, ...]:
    from pypinyin import Style, pinyin

    if not line or not all(is_han(c) for c in line):
        return tuple((pinyin(c, style=Style.TONE, errors="ignore") or [[""]])[0][0] if is_han(c) else ""
                     for c in line)
    return tuple(r[0] for r in pinyin(line, style=Style.TONE))


def check_poem(text: str, rhyme: str = "pingshui", tones: str = "loose", readings: str = "all",
               sanzewei: bool = False) -> Report:
    """Judge `text` (punctuated or one line per verse line) under a rhyme scheme and tone mode.

    readings: "all" (rare readings allowed, each with a warning) or "common" (only well-attested
    readings). sanzewei: warn about lines ending in three 仄 (三仄尾).
    """
    check_choice("readings", readings, READINGS)
    check_choice("tones", tones, TONE_MODES)
    rs = scheme(rhyme, "all")
    lines = split_verse(text)
    report = Report(text=text.strip(), scheme=rhyme, tones=tones, readings=readings)
    opts = [rs.readings_in_context(line) for line in lines]
    if readings == "common":
        opts = [[tuple(r for r in o if r.common) or o for o in line] for line in opts]
    report.lines = [[CharInfo(c, p, _tone_summary(o), list(dict.fromkeys(r.group for r in o if r.group)))
                     for c, p, o in zip(line, _line_pinyin(line), line_opts)]
                    for line, line_opts in zip(lines, opts)]
    bad = [c for line in lines for c in line if not is_han(c)]
    if bad:
        report.violations.append(f"not Chinese characters: {' '.join(dict.fromkeys(bad))}")
        report.reasons.append("not Chinese")
    form = detect_form(lines)
    if form is None:
        shape = (f"{len(lines)} line{'s' * (len(lines) != 1)} of "
                 f"{'+'.join(str(len(x)) for x in lines)} characters" if lines else "no verse line")
        report.violations.append(f"wrong length: {shape}; a Tang poem has 4 or 8 lines of 5 or "
                                 "7 characters")
        report.reasons.append("wrong length")
        return report
    report.form = form.name
    candidates = templates(form) if tones != "off" else [None]
    best = min((_Judge(lines, opts, form, tpl, rs, tones, sanzewei).run() for tpl in candidates),
               key=lambda j: j.score)
    if best.tone_violations and readings == "all":
        # Rare readings may only let a poem's tones pass. Tones that fail anyway are described in
        # their common readings, so that 白云千载空悠悠 shows its 三平尾 rather than hiding it
        # behind a rare 空 仄. Line ends keep every reading: a poem that rhymes stays rhyming.
        last = form.chars_per_line - 1
        common = [[o if j == last else tuple(r for r in o if r.common) or o for j, o in enumerate(line)]
                  for line in opts]
        best = min((_Judge(lines, common, form, tpl, rs, tones, sanzewei).run() for tpl in candidates),
                   key=lambda j: j.score)
    report.template = best.template.name if best.template else None
    report.rhyme_group = best.group
    report.violations += best.violations
    report.warnings += best.warnings
    report.notes += best.notes
    report.tone_violations = best.tone_violations
    report.rhyme_ok = best.rhyme_ok
    for (i, j), mark in best.marks.items():
        info = report.lines[i][j]
        for k, v in mark.items():
            setattr(info, k, v)
    if bad:
        report.verdict = "非律绝"
    elif not best.rhyme_ok:
        report.verdict = "出韵"
    elif report.violations:
        report.verdict = "古体"
    else:
        report.verdict = "近体" if tones != "off" else "押韵"
    report.reasons += best.reasons(report.verdict)
    report.parallelism = couplet_scores(lines, bundled())
    return report


# --------------------------------------------------------------------------------------------
# One template


def _rhyme_lines(form: Form, first_line_rhymes: bool) -> list[int]:
    return [i for i in range(form.lines) if line_rhymes(i, first_line_rhymes)]


def _tone_summary(options: tuple[Reading, ...]) -> str | None:
    tones = {r.tone for r in options if r.common and r.tone} or {r.tone for r in options if r.tone}
    return None if not tones else tones.pop() if len(tones) == 1 else "both"


@dataclass(frozen=True)
class _RhymeGroup:
    """A rhyme group the poem may rhyme in, judged (see _Judge._rhyme_group)."""

    group: str
    rank: tuple  # lower is better: lines off, rare readings, borrowed, 仄, earliest, table order
    off: list[int]  # lines that should rhyme and do not
    borrowed: bool  # line 1 rhymes in a neighbouring group (首句借邻韵)


def _cost(options: tuple[Reading, ...], ok) -> int | None:
    """0 if a common reading satisfies `ok`, 1 if only a rare one does, None if none does."""
    if any(ok(r) for r in options if r.common):
        return 0
    if any(ok(r) for r in options):
        return 1
    return None


class _Judge:
    """Judge a poem against one template (or none, with tones off)."""

    def __init__(self, lines, opts, form: Form, tpl: Template | None, rs, tones, sanzewei):
        self.lines, self.opts, self.form, self.template, self.rs = lines, opts, form, tpl, rs
        self.tones, self.sanzewei = tones, sanzewei
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.marks: dict[tuple[int, int], dict] = {}
        self.tone_violations = 0
        self.group: str | None = None
        self.rhyme_ok = False
        self.off: list[int] = []  # lines whose rhyme character does not rhyme
        self.oblique = False  # rhymes in a 仄 group under a tonal template
        self.repeated: list[str] = []
        self.kinds: dict[int, list[str]] = {}  # line -> kinds of its tone violations

    @property
    def score(self):
        first = self.template is not None and self.template.first_line_rhymes
        # Ties: rather a first line that does not rhyme than one that fails to (鹿柴's 人 in a
        # 仄韵 poem), then one that does (间 in 朝辞白帝彩云间 reads both ways).
        return len(self.violations), len(self.warnings), len(self.notes), 0 in self.off, not first

    def run(self) -> "_Judge":
        self._rhyme()
        if self.template is not None:
            self._tones()
        return self

    # ---------------------------------------------------------------- rhyme

    def _rhyme(self) -> None:
        form, last = self.form, self.form.chars_per_line - 1
        first = self.template is not None and self.template.first_line_rhymes
        ends = _rhyme_lines(form, False)  # couplet ends: always rhyme
        groups = {r.group for i in ends + [0] for r in self.opts[i][last] if r.group}
        if not groups:
            self.off = ends + ([0] if first else [])
            for i in self.off:
                self._rhyme_mark(i, None, False)
                self.violations.append(f"line {i + 1} ends with {self.lines[i][last]!r}, which is not in "
                                       "the rhyme table: it does not rhyme")
            return
        choice = min((self._rhyme_group(g, ends, first) for g in groups), key=lambda c: c.rank)
        self.group, self.off = choice.group, choice.off
        rhyming = _rhyme_lines(form, first)  # with tones off, the couplet ends only
        for i in rhyming:
            self._judge_rhyme_line(i, choice)
        self.rhyme_ok = not choice.off
        if self.template is not None and choice.group not in self.rs.level_groups:
            self.oblique = True
            self.violations.append(f"仄韵: the poem rhymes in {choice.group}, an oblique (仄) group; "
                                   "regulated verse rhymes in a level (平) group")
            self.tone_violations += len(rhyming)
        self._repeated_rhymes([i for i in rhyming if i not in choice.off])

    def _rhyme_group(self, g: str, ends: list[int], first: bool) -> _RhymeGroup:
        """How well the poem rhymes in group `g`: the lines off it, those that rhyme in it only
        through a rare reading, and whether line 1 borrows a neighbouring group (首句借邻韵)."""
        last = self.form.chars_per_line - 1
        costs = {i: _cost(self.opts[i][last], lambda r: r.group == g) for i in ends}
        off = [i for i in ends if costs[i] is None]
        rare = [i for i in ends if costs[i] == 1]
        borrowed = False
        if first:
            c0 = _cost(self.opts[0][last], lambda r: r.group == g)
            if c0 is None:
                c0 = _cost(self.opts[0][last], lambda r: r.group in NEIGHBOURS.get(g, ()))
                if c0 is None:
                    off = [0] + off
                else:
                    borrowed = True
            if c0 == 1:
                rare = [0] + rare
        level = g in self.rs.level_groups or self.template is None
        # On a tie, the group of the earliest couplet end: the poem sets its rhyme first.
        earliest = min((i for i in ends if i not in off), default=self.form.lines)
        rank = (len(off), len(rare), borrowed, not level, earliest, self.rs.group_names.index(g))
        return _RhymeGroup(g, rank, off, borrowed)

    def _judge_rhyme_line(self, i: int, choice: _RhymeGroup) -> None:
        """The verdict on line i's rhyme in the chosen group: off it, borrowed, or in it."""
        last, g = self.form.chars_per_line - 1, choice.group
        ch = self.lines[i][last]
        if i in choice.off:
            why = ("is not in the rhyme table" if not any(r.group for r in self.opts[i][last])
                   else f"is not in {g}")
            self.violations.append(f"line {i + 1} ends with {ch!r}, which {why}: it does not rhyme")
            self._rhyme_mark(i, None, False)
        elif i == 0 and choice.borrowed:
            own = [r for r in self.opts[0][last] if r.group in NEIGHBOURS.get(g, ())]
            used = next((r for r in own if r.common), own[0])
            self.notes.append(f"首句借邻韵: line 1 ends with {ch!r} ({used.group}), a group next to "
                              f"{g} (邻韵), which a first line may borrow")
            self._rhyme_mark(i, used, True)
            if not used.common:
                self.warnings.append(self._rare_message(0, last, [used], f"rhymes in {used.group}"))
        else:
            used = next((r for r in self.opts[i][last] if r.group == g and r.common), None)
            if used is None:
                used = next(r for r in self.opts[i][last] if r.group == g)
                self.warnings.append(self._rare_message(i, last, [used], f"rhymes in {g}"))
            self._rhyme_mark(i, used, True)

    def _repeated_rhymes(self, rhyming: list[int]) -> None:
        """重韵: one character ending two of the lines that rhyme."""
        last = self.form.chars_per_line - 1
        seen: dict[str, list[int]] = {}
        for i in rhyming:
            seen.setdefault(self.lines[i][last], []).append(i + 1)
        for ch, at in seen.items():
            if len(at) > 1:
                self.repeated.append(ch)
                self.violations.append(f"重韵: {ch!r} ends lines {' and '.join(map(str, at))}; a rhyme "
                                       "character is never used twice in regulated verse")

    def _rhyme_mark(self, i: int, used: Reading | None, ok: bool) -> None:
        last = self.form.chars_per_line - 1
        self.marks[(i, last)] = {"rhyme": True, "ok": ok, "reading": used.label if used else None,
                                 "rare": bool(used and not used.common)}
        if used is not None and used.tone:
            self.marks[(i, last)]["tone"] = used.tone

    # ---------------------------------------------------------------- tones

    def _tones(self) -> None:
        tpl, form = self.template, self.form
        chosen: list[LineShape | None] = []
        for i, line in enumerate(self.lines):
            shapes = line_shapes(form.chars_per_line, tpl.line_types[i], self.tones)
            best = None
            for rank, shape in enumerate(shapes):
                missing, rare = self._match(i, shape)
                if shape.kind == "对句相救":  # only with 平 at the rescue position of the 对句
                    if i + 1 >= form.lines:
                        continue
                    rescue = _cost(self.opts[i + 1][shape.rescue_at], lambda r: r.tone == PING)
                    if rescue is None:
                        continue
                    if rescue == 1:
                        rare = rare + [(i + 1, shape.rescue_at, PING)]
                if shape.kind == "救对句" and not (chosen and chosen[-1] and chosen[-1].kind == "对句相救"):
                    continue
                if not missing and (best is None or (len(rare), rank) < best[0]):
                    best = ((len(rare), rank), shape, rare)
            if best is None:
                chosen.append(None)
                self._fail_line(i, shapes[0])
                continue
            _, shape, rare = best
            chosen.append(shape)
            self._mark_line(i, shape)
            for (k, j, need) in rare:
                used = [r for r in self.opts[k][j] if r.tone == need]
                self.warnings.append(self._rare_message(k, j, used, f"counts as {need}"))
                self.marks.setdefault((k, j), {}).update({"rare": True, "reading": used[0].label})
            self._describe(i, shape)
        if self.sanzewei:
            for i, line in enumerate(self.lines):
                n = self.form.chars_per_line
                tail = [self.marks.get((i, j), {}).get("tone") or _tone_summary(self.opts[i][j])
                        for j in range(n - 3, n)]
                if all(t == ZE for t in tail):
                    self.warnings.append(f"三仄尾: line {i + 1} ends in three 仄 ({line[-3:]}), which poets "
                                         "avoided but did not forbid")

    def _match(self, i: int, shape: LineShape):
        """(positions whose tone no reading gives, rare readings relied on) for line i in `shape`."""
        last = self.form.chars_per_line - 1
        missing, rare = [], []
        for j, need in enumerate(shape.pattern):
            if need == "*" or (j == last and self.oblique and self.marks.get((i, j), {}).get("rhyme")):
                continue  # an oblique rhyme is reported once, as 仄韵
            cost = _cost(self.opts[i][j], lambda r, need=need: r.tone == need)
            if cost is None:
                missing.append(j)
            elif cost == 1:
                rare.append((i, j, need))
        return missing, rare

    def _mark_line(self, i: int, shape: LineShape) -> None:
        for j, need in enumerate(shape.pattern):
            mark = self.marks.setdefault((i, j), {})
            mark.setdefault("rhyme", False)
            if need == "*":
                continue
            mark["required"] = need
            mark.setdefault("ok", True)
            if not mark.get("rhyme"):
                used = [r for r in self.opts[i][j] if r.tone == need]
                pick = next((r for r in used if r.common), used[0] if used else None)
                if pick is not None:
                    mark.update({"tone": need, "reading": pick.label if len(self.opts[i][j]) > 1 else None,
                                 "rare": not pick.common})

    def _fail_line(self, i: int, regular: LineShape) -> None:
        missing, _ = self._match(i, regular)
        self._mark_line(i, regular)
        kinds = self.kinds.setdefault(i, [])
        for j in missing:
            self.marks[(i, j)].update({"ok": False, "tone": _tone_summary(self.opts[i][j])})
            kind, message = self._tone_message(i, j, regular.pattern[j])
            kinds.append(kind)
            self.violations.append(message)
            self.tone_violations += 1

    def _tones_of(self, i: int) -> list[str | None]:
        return [_tone_summary(o) for o in self.opts[i]]

    def _tone_message(self, i: int, j: int, need: str) -> tuple[str, str]:
        n, line = self.form.chars_per_line, self.lines[i]
        offset, ltype = n - 5, self.template.line_types[i]
        tones = self._tones_of(i)
        ch, tone = line[j], tones[j]
        where = f"line {i + 1}, character {j + 1} {ch!r}"
        if ltype == "B" and j == offset and tone == ZE:
            level = [line[k] for k in range(offset, n - 1) if tones[k] in (PING, "both")]
            if len(level) <= 1 and tones[offset + 2] != PING:
                lone = f"only {level[0]!r} is 平" if level else "no character is 平"
                return "孤平", (f"{where}: 孤平 — with {ch!r} 仄, {lone} among characters {offset + 1}–{n - 1} "
                              f"({line[offset:n - 1]}) besides the rhyme, and character {offset + 3} "
                              f"{line[offset + 2]!r} is not 平 to rescue it (孤平拗救)")
        if ltype == "D" and j == offset + 2 and tone == PING and all(t in (PING, "both") for t in tones[-2:]):
            return "三平尾", f"{where}: 三平尾 — the line ends in three 平 ({line[-3:]})"
        if tone is None:
            return "拗句", f"{where}: tone unknown, the template needs {need}"
        hint = ""
        if ltype == "A" and j == offset + 3 and i + 1 < self.form.lines:
            hint = (f" (对句相救 would need 平 at character {offset + 3} of line {i + 2}, where "
                    f"{self.lines[i + 1][offset + 2]!r} is not 平)")
        return "拗句", f"{where} is {tone}, the template needs {need}{hint}"

    def _describe(self, i: int, shape: LineShape) -> None:
        n, line = self.form.chars_per_line, self.lines[i]
        offset = n - 5
        if shape.kind == "孤平拗救":
            self.notes.append(f"孤平拗救: line {i + 1} has 仄 at character {offset + 1} {line[offset]!r}, and "
                              f"character {offset + 3} {line[offset + 2]!r} is 平, so the line keeps two 平 "
                              "besides the rhyme")
        elif shape.kind == "对句相救":
            at = [k for k in (offset + 2, offset + 3) if _tone_summary(self.opts[i][k]) == ZE]
            where = ("characters " + " and ".join(str(k + 1) for k in at) if len(at) > 1
                     else f"character {at[0] + 1 if at else offset + 4}")
            self.notes.append(f"对句相救: line {i + 1} has 仄 at {where} "
                              f"({''.join(line[k] for k in at) or line[offset + 3]}), rescued by "
                              f"{self.lines[i + 1][offset + 2]!r} 平 at character {offset + 3} of line {i + 2}")
        elif shape.kind == "特定格式":
            self.notes.append(f"特定格式: line {i + 1} ends 平仄平仄 ({line[offset:]}) instead of 平平仄仄 — "
                              f"the accepted special form, its character {offset + 1} {line[offset]!r} being 平")
        elif shape.kind == "拗":
            self.warnings.append(f"拗: line {i + 1} ({line}) is 仄平仄平仄 in its last five characters — the "
                                 f"special form 平平仄平仄 with 仄 at character {offset + 1} {line[offset]!r}, "
                                 "outside the forms 王力 counts as accepted")

    def _rare_message(self, i: int, j: int, used: list[Reading], what: str) -> str:
        ch = self.lines[i][j]
        labels = " / ".join(r.label for r in used)
        usage = self.rs.usage(ch)
        if self.rs.name == "modern":
            here = next((r.label for r in self.opts[i][j] if r.common), None)
            usage = f"pypinyin reads it {here} in this line" if here else usage
        return (f"rare reading: line {i + 1}, character {j + 1} {ch!r} {what} only through a rare "
                f"reading ({labels})" + (f"; {usage}" if usage else ""))

    # ---------------------------------------------------------------- verdict

    def reasons(self, verdict: str) -> list[str]:
        """Short labels of what made the verdict (empty for 近体)."""
        if verdict in ("近体", "押韵"):
            return []
        out = [f"出韵 (line {i + 1})" for i in self.off]
        if self.oblique:
            out.append(f"仄韵 ({self.group})")
        out += [f"重韵 ({ch})" for ch in self.repeated]
        if self.template is None:
            return out
        second = [_tone_summary(o[1]) for o in self.opts]
        for i in range(self.form.lines - 1):
            a, b = second[i], second[i + 1]
            if a in (PING, ZE) and b in (PING, ZE):
                if i % 2 == 0 and a == b:
                    out.append(f"失对 (lines {i + 1}–{i + 2})")
                elif i % 2 == 1 and a != b:
                    out.append(f"失粘 (lines {i + 1}–{i + 2})")
        for i in sorted(self.kinds):
            for kind in dict.fromkeys(self.kinds[i]):
                out.append(f"{kind} (line {i + 1})")
        return out


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams of the Han characters (punctuation excluded)."""
    grams, total = set(), 0
    for text in texts:
        for line in split_verse(text):
            for k in range(len(line) - n + 1):
                grams.add(line[k:k + n])
                total += 1
    return len(grams) / total if total else 0.0

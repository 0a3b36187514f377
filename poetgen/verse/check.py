"""The poem checker: form, rhyme and tones of a poem, with every violation named.

It judges a poem against each tonal template of its form and keeps the one with the fewest
violations, so it is the referee for constrained generation (tests) and the evaluation metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from poetgen.verse.lexicon import bundled
from poetgen.verse.scores import couplet_scores
from poetgen.verse.prosody import (FORMS, PING, ZE, Form, free_positions, is_han, line_rhymes, scheme,
                                    split_verse, templates)


@dataclass
class CharInfo:
    char: str
    pinyin: str
    tone: str | None  # 平, 仄, both, or None (unknown)
    groups: list[str]  # rhyme groups under the scheme
    rhyme: bool = False  # at a rhyme position of the chosen template
    required: str | None = None  # 平/仄 the template wants here (None: free)
    ok: bool = True


@dataclass
class Report:
    text: str
    scheme: str
    tones: str
    form: str | None = None
    template: str | None = None
    rhyme_group: str | None = None
    lines: list[list[CharInfo]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
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


@lru_cache(maxsize=16384)
def _pinyin(ch: str) -> str:
    from pypinyin import Style, pinyin

    found = pinyin(ch, style=Style.TONE, errors="ignore") if is_han(ch) else []
    return found[0][0] if found else ""


def detect_form(lines: list[str]) -> Form | None:
    lengths = {len(x) for x in lines}
    if len(lengths) == 1 and len(lines) in (4, 8):
        n = lengths.pop()
        for f in FORMS.values():
            if f.chars_per_line == n and f.lines == len(lines):
                return f
    return None


def _shared_group(chars: list[str], rs) -> tuple[str | None, list[int]]:
    """The group most rhyme characters share, and the indices of those that are not in it."""
    counts: dict[str, int] = {}
    for c in chars:
        for g in set(rs.groups(c)):
            counts[g] = counts.get(g, 0) + 1
    if not counts:
        return None, list(range(len(chars)))
    best = max(counts, key=lambda g: (counts[g], g in rs.level_groups))
    return best, [i for i, c in enumerate(chars) if best not in rs.groups(c)]


def check_poem(text: str, rhyme: str = "pingshui", tones: str = "loose") -> Report:
    """Judge `text` (punctuated or one line per verse line) under a rhyme scheme and tone mode."""
    rs = scheme(rhyme)
    lines = split_verse(text)
    report = Report(text=text.strip(), scheme=rhyme, tones=tones)
    report.lines = [[CharInfo(c, _pinyin(c), rs.tone(c), list(rs.groups(c))) for c in line]
                    for line in lines]
    bad = [c for line in lines for c in line if not is_han(c)]
    if bad:
        report.violations.append(f"not Chinese characters: {' '.join(dict.fromkeys(bad))}")
    form = detect_form(lines)
    if form is None:
        shape = "+".join(str(len(x)) for x in lines) or "nothing"
        report.violations.append(f"wrong length: {len(lines)} lines of {shape} characters; a Tang "
                                 "poem has 4 or 8 lines of 5 or 7 characters")
        return report
    report.form = form.name
    candidates = templates(form) if tones != "off" else [None]
    # Fewest violations; on a tie, a first line that rhymes (间 in 朝辞白帝彩云间 reads both ways).
    best = min((_judge(lines, form, tpl, rs, tones) for tpl in candidates),
               key=lambda judged: (judged[0], not (judged[1] and judged[1].first_line_rhymes)))
    _, tpl, group, messages, marks, tone_violations, rhyme_ok = best
    report.template = tpl.name if tpl else None
    report.rhyme_group = group
    report.violations += messages
    report.tone_violations = tone_violations
    report.rhyme_ok = rhyme_ok
    for (i, j), (is_rhyme, required, ok) in marks.items():
        info = report.lines[i][j]
        info.rhyme, info.required, info.ok = is_rhyme, required, ok
    report.parallelism = couplet_scores(lines, bundled())
    return report


def _judge(lines, form: Form, tpl, rs, tones):
    """Score one template: (violations, template, group, messages, marks, tone violations, rhymes)."""
    messages: list[str] = []
    marks: dict[tuple[int, int], tuple[bool, str | None, bool]] = {}
    last = form.chars_per_line - 1
    first_rhymes = tpl is not None and tpl.first_line_rhymes
    rhyme_lines = [i for i in range(form.lines) if line_rhymes(i, first_rhymes)]
    rhyme_chars = [lines[i][last] for i in rhyme_lines]
    group, off = _shared_group(rhyme_chars, rs)
    for k in off:
        i = rhyme_lines[k]
        ch = rhyme_chars[k]
        why = "is not in the rhyme table" if not rs.groups(ch) else f"is not in {group}"
        messages.append(f"line {i + 1} ends with {ch!r}, which {why}: it does not rhyme")
    tone_violations = 0
    for i, line in enumerate(lines):
        free = free_positions(form.chars_per_line, tpl.line_types[i], tones) if tpl else set()
        for j, ch in enumerate(line):
            is_rhyme = i in rhyme_lines and j == last
            required = tpl.lines[i][j] if tpl is not None and j not in free else None
            ok = True
            if required is not None:
                tone = rs.tone(ch)
                ok = tone == required or tone == "both"
                if not ok:
                    tone_violations += 1
                    messages.append(_tone_message(i, j, ch, tone, required, tpl.line_types[i], form))
            marks[(i, j)] = (is_rhyme, required, ok and not (is_rhyme and rhyme_chars and
                                                            rhyme_lines.index(i) in off))
    return len(messages), tpl, group, messages, marks, tone_violations, group is not None and not off


def _tone_message(i, j, ch, tone, required, line_type, form) -> str:
    offset = form.chars_per_line - 5
    where = f"line {i + 1}, character {j + 1} {ch!r}"
    if line_type == "B" and j == offset and tone == ZE:
        return f"{where}: 孤平 (the line's only level tone besides the rhyme)"
    if line_type == "D" and j == offset + 2 and tone == PING:
        return f"{where}: 三平尾 (three level tones at the end of the line)"
    if tone is None:
        return f"{where}: tone unknown, the template needs {required}"
    return f"{where} is {tone}, the template needs {required}"


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams of the Han characters (punctuation excluded)."""
    grams, total = set(), 0
    for text in texts:
        for line in split_verse(text):
            for k in range(len(line) - n + 1):
                grams.add(line[k:k + n])
                total += 1
    return len(grams) / total if total else 0.0


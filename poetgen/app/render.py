"""Rendering for the terminal: a checked poem (characters with pinyin, 平仄 and rhyme marks,
coloured), and a poem laid out one verse line per row (`sample --by-line`, and the REPL when a
poem is wider than the terminal).

Shared by `poetgen check` and the REPL's `:check`, so both show the same thing.
"""

from __future__ import annotations

import re
import unicodedata

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from poetgen.verse.check import VERDICTS, Report

TONE_STYLE = {"平": "green", "仄": "blue", "both": "yellow", None: "dim"}
TONE_MARK = {"平": "平", "仄": "仄", "both": "中", None: "?"}
# Mean 对仗 scores of real 律诗 in tang_val (`python bench/quality_bench.py scores`).
PARALLEL_REAL_MIDDLE, PARALLEL_REAL_FIRST = 0.44, 0.23
PARALLEL_GOOD = 0.4  # shown in bold: about a real middle couplet


VERSE_END = re.compile(r"([，。？！；])(?=[^\n])")  # a verse line's end, not already at a break


def printable(text: str) -> str:
    """`text` with control characters shown, not sent: a pasted escape sequence (\\x1b[8m
    conceals what follows) would otherwise drive the terminal. Line breaks and tabs stay."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1]
                   for c in text)


def verse_rows(text: str) -> str:
    """`text` with a line break after every verse line (，。？！；), e.g. a 七律's 8 lines on 8
    rows; text without that punctuation is returned as it is."""
    return VERSE_END.sub("\\1\n", text)


def render_report(report: Report) -> Group:
    width = max((len(line) for line in report.lines), default=0)
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="dim", justify="right")
    for _ in range(width):
        table.add_column(justify="center")
    for i, line in enumerate(report.lines):
        chars, pinyin, tones = [], [], []
        for info in line:
            bad = "bold red" if not info.ok else ""
            chars.append(Text(printable(info.char),
                              style=bad or ("bold underline" if info.rhyme else "")))
            pinyin.append(Text(info.pinyin, style="cyan"))
            mark = TONE_MARK[info.tone] + ("韵" if info.rhyme else "") + ("*" if info.rare else "")
            tones.append(Text(mark, style=bad or TONE_STYLE[info.tone]))
        table.add_row(str(i + 1), *chars)
        table.add_row("", *pinyin)
        table.add_row("", *tones)
    head = Text()
    head.append(f"{report.form or 'not a regular form'}", style="bold")
    if report.template:
        head.append(f"  {report.template}")
    if report.rhyme_group:
        head.append(f"  韵 {report.rhyme_group} ({report.scheme})")
    head.append(f"  tones {report.tones}")
    if report.readings != "all":
        head.append(f"  readings {report.readings}")
    verdict = Text(f"{report.verdict}: {VERDICTS[report.verdict]}", style="green" if report.ok else "red")
    if report.reasons:
        verdict.append(" — " + ", ".join(report.reasons))
    # Violations quote the poem's characters: a pasted escape sequence is shown, not run.
    findings = Text("\n".join([f"✗ {printable(v)}" for v in report.violations]), style="red")
    if report.ok:
        findings = Text("✓ no violations", style="green")
    for w in report.warnings:
        findings.append(f"\n! {w}", style="yellow")
    for n in report.notes:
        findings.append(f"\n· {n}", style="dim")
    legend = Text("平 level  仄 oblique  中 either reading  ? unknown  韵 rhyme position  "
                  "* a rare reading", style="dim")
    parts = [head, table, verdict, findings]
    if report.parallelism:
        parts.append(render_parallelism(report.parallelism))
    return Group(*parts, legend)


def render_parallelism(scores: list[float]) -> Text:
    """对仗 per couplet, beside what real 律诗 of tang_val score."""
    text = Text("对仗 ")
    for k, score in enumerate(scores):
        text.append(f" {2 * k + 1}–{2 * k + 2}: ")
        text.append(f"{score:.2f}", style="bold" if score >= PARALLEL_GOOD else "")
    text.append(f"   (real 律诗: middle couplets {PARALLEL_REAL_MIDDLE:.2f}, first couplet "
                f"{PARALLEL_REAL_FIRST:.2f} on average; a character facing itself scores -2)",
                style="dim")
    return text


def poem_rows(poem: str, width: int | None, label: str = "") -> list[str]:
    """How to print a poem in `width` terminal cells: one row if it fits, else one verse line per
    row (continuation rows indented under `label`, e.g. '2. '). width None: always one row."""
    if width is None or max(cell_len(row) for row in (label + poem).split("\n")) <= width:
        return [label + poem]
    rows = verse_rows(poem.strip()).split("\n")
    return [label + rows[0]] + [" " * cell_len(label) + row for row in rows[1:]]


def wrap_fields(text: str, width: int, sep: str = " · ") -> str:
    """Fields joined by `sep`, broken between fields into rows of at most `width` cells (a field
    wider than the row stays whole): a status line that fits a narrow terminal."""
    rows, row = [], ""
    for field in text.split(sep):
        longer = f"{row}{sep}{field}" if row else field
        if row and cell_len(longer) > width:
            rows.append(row)
            row = field
        else:
            row = longer
    return "\n".join(rows + [row])

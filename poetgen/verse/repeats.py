"""Repetition in a poem, as a reader of Tang verse counts it.

    重字  a character in two places of a poem. 叠字, the same character twice in a row within a
         line (萧萧, 滚滚), is one use: poets double characters on purpose.
    重韵  a character ending two of the lines that rhyme or may rhyme (line 1 and every even
         line): the same rhyme twice, a plain fault in regulated verse.
"""

from __future__ import annotations

from collections import Counter


def repeated_chars(lines: list[str]) -> list[str]:
    """Characters used in more than one place (a run of 叠字 is one place), in order of first use."""
    uses: Counter[str] = Counter()
    for line in lines:
        for j, ch in enumerate(line):
            if j == 0 or line[j - 1] != ch:
                uses[ch] += 1
    return [ch for ch, n in uses.items() if n > 1]


def repeated_rhymes(lines: list[str]) -> list[str]:
    """Characters ending more than one of line 1 and the even lines (the rhyme positions)."""
    ends = Counter(line[-1] for i, line in enumerate(lines) if line and (i == 0 or i % 2 == 1))
    return [ch for ch, n in ends.items() if n > 1]

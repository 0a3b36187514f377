"""重字, repetition in a poem as a reader of Tang verse counts it: a character in two places of a
poem. 叠字, the same character twice in a row within a line (萧萧, 滚滚), is one use: poets double
characters on purpose. (重韵, a rhyme twice, is a violation the checker names: verse.check.)
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


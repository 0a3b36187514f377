"""A poem's plan: which keywords it must hold and where each goes, from --keywords or a --theme.

    --keywords 春,雨,江   each keyword (a character or a two-character word) is placed in the
                         poem by construction: it becomes a fixed character of the constrained
                         decoder, like an acrostic head, so it cannot be left out.
    --theme 秋            without keywords, the theme is expanded into THEME_KEYWORDS keywords:
                         the theme itself when it is one character or word the corpus knows, then
                         its companions, the characters and words real poems put beside it in
                         other lines (lexicon: topic vectors from cross-line co-occurrence,
                         first-order, so 秋 gives 砧 蟋蟀 白露 重阳 rather than 月 夜).

Where a keyword goes: each keyword gets its own line (keyword i on line i when there are as many
keywords as lines, otherwise lines spread over the poem, drawn with the seed), and inside the line a
start position drawn in proportion to how often real poems start that word there (lexicon
positions: 明月 opens a 五言 line, 归 ends one). A position is only taken if some tonal template
still holds every fixed character with it (tones, one rhyme group, no rhyme twice), so the
decoder always has a way to finish the poem. The same seed gives the same plan.

Limits: the companions are statistics of one corpus; a theme it barely knows gets few or odd ones
(a theme none of whose characters it knows is refused). A keyword is placed, not explained: the
model writes around it, and a word forced into a line can still read awkwardly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from poetgen.errors import ConstraintError
from poetgen.lm.corpus import Vocab
from poetgen.verse.lexicon import POSITION_COLUMNS, Lexicon
from poetgen.verse.prosody import han_only, is_han, split_keywords, split_verse

THEME_KEYWORDS = {4: 2, 8: 3}  # keywords a theme expands to, by the number of lines
MIN_COMPANION_COUNT = 40  # a companion must be this common in the corpus: the model knows it
COMPANION_POOL = 10  # keywords are drawn from the theme's best this many companions
POSITION_PRIOR = 0.5  # added to every position's count: a word never seen at a position can go there


@dataclass
class Plan:
    theme: str = ""
    keywords: list[str] = field(default_factory=list)  # the words the poem must hold
    placements: list[tuple[int, int, str]] = field(default_factory=list)  # (line, col, word), 0-based
    chosen_from_theme: bool = False  # keywords drawn from the theme's companions

    def to_dict(self) -> dict:
        return {"theme": self.theme, "keywords": self.keywords,
                "keywords_from": "theme" if self.chosen_from_theme else "given",
                "placements": [{"word": w, "line": i + 1, "char": j + 1}
                               for i, j, w in self.placements]}

    def fixed(self) -> dict[tuple[int, int], str]:
        """(line, col) -> character: the plan as fixed characters of the constrained decoder."""
        return {(i, j + d): c for i, j, w in self.placements for d, c in enumerate(w)}



def describe_plan(plan: dict) -> str:
    """One line for a plan's dict (Plan.to_dict, Poem.plan): 'theme 秋 → 秋 (line 2, char 3), ...'."""
    where = ", ".join(f"{p['word']} (line {p['line']}, char {p['char']})" for p in plan["placements"])
    return (f"theme {plan['theme']} → " if plan["keywords_from"] == "theme" else "keywords: ") + where


def theme_keywords(theme: str, lex: Lexicon, vocab: Vocab, count: int, rng: random.Random) -> list[str]:
    """`count` keywords for a theme: itself if it is one known token, then companions drawn from
    its best COMPANION_POOL, none sharing a character with another."""
    ids = lex.tokens_in(theme)
    if not ids:
        raise ConstraintError(f"--theme {theme!r}: the corpus statistics know none of its characters; "
                              "give another theme, or --keywords")
    direction = (lex.topic[ids] * lex.weights[ids, None]).sum(0)
    score = lex.topic @ direction  # about the PMI of keeping company with the theme
    usable = _usable(lex, vocab)
    theme_chars = set(han_only(theme))
    keywords: list[str] = []
    whole = "".join(split_verse(theme))
    if whole in lex.index and usable[lex.index[whole]] and len(whole) <= 2:
        keywords.append(whole)
    score = np.where(usable, score, -np.inf)
    pool = [lex.tokens[i] for i in np.argsort(-score, kind="stable")[:4 * COMPANION_POOL]
            if np.isfinite(score[i]) and not set(lex.tokens[i]) & theme_chars][:COMPANION_POOL]
    rng.shuffle(pool)
    for word in pool:
        if len(keywords) >= count:
            break
        if not set(word) & {c for k in keywords for c in k}:
            keywords.append(word)
    return keywords[:count]


def _usable(lex: Lexicon, vocab: Vocab) -> np.ndarray:
    """(N,) tokens fit to be a keyword: common enough, Han, in the vocabulary, not half a word."""
    bound = lex.bound_chars()
    return np.array([int(n) >= MIN_COMPANION_COUNT and t not in bound
                         and all(c in vocab and is_han(c) for c in t)
                         for t, n in zip(lex.tokens, lex.counts.tolist())])


def place_keywords(words: list[str], compiled, lex: Lexicon | None, rng: random.Random
                   ) -> list[tuple[int, int, str]]:
    """(line, col, word) for every keyword, such that the constrained decoder can still finish."""
    from poetgen.verse.constrain import placement_fits

    form = compiled.spec.form
    lines, width = form.lines, form.chars_per_line
    for w in words:
        if len(w) > width:
            raise ConstraintError(f"keyword {w!r} is longer than a {form.name} line")
        missing = [c for c in w if c not in compiled.vocab]
        if missing:
            raise ConstraintError(f"keyword {w!r}: {' '.join(missing)} is not in the model's "
                                  "vocabulary; choose another keyword")
    if sum(len(w) for w in words) > lines * width:
        raise ConstraintError(f"{len(words)} keywords do not fit in a {form.name}")
    if len(words) == lines:
        line_of = list(range(lines))
    else:
        spread = sorted(rng.sample(range(lines), len(words))) if len(words) < lines else \
            [i % lines for i in range(len(words))]
        line_of = spread
    placed: dict[tuple[int, int], str] = {}
    result: list[tuple[int, int, str] | None] = [None] * len(words)

    def options(k: int, line: int) -> list[tuple[float, int]]:
        w = words[k]
        out = []
        for j in range(width - len(w) + 1):
            cells = {(line, j + d): c for d, c in enumerate(w)}
            if any(pos in placed for pos in cells):
                continue
            if not placement_fits(compiled, placed | cells):
                continue
            out.append((_position_weight(lex, w, width, j), j))
        return out

    def search(k: int) -> bool:  # depth first; a keyword with no room moves to another line
        if k == len(words):
            return True
        lines_to_try = [line_of[k]] + [i for i in rng.sample(range(lines), lines) if i != line_of[k]]
        for line in lines_to_try:
            opts = options(k, line)
            while opts:
                weights = [w for w, _ in opts]
                pick = rng.choices(range(len(opts)), weights)[0]
                _, j = opts.pop(pick)
                cells = {(line, j + d): c for d, c in enumerate(words[k])}
                placed.update(cells)
                result[k] = (line, j, words[k])
                if search(k + 1):
                    return True
                for pos in cells:
                    del placed[pos]
        return False

    if not search(0):
        raise ConstraintError(f"keywords {' '.join(words)} cannot all be placed in a {form.name} "
                              "with these tones and rhymes; give fewer, or --tones off")
    return [r for r in result if r is not None]


def _position_weight(lex: Lexicon | None, word: str, width: int, j: int) -> float:
    if lex is None or word not in lex.index or width not in POSITION_COLUMNS:
        return 1.0
    return float(lex.positions[lex.index[word], POSITION_COLUMNS[width] + j]) + POSITION_PRIOR


def make_plan(theme: str, keywords: str, compiled, lex: Lexicon | None, seed: int) -> Plan | None:
    """The plan for one poem (None when neither a theme nor keywords is given)."""
    if not theme and not keywords:
        return None
    rng = random.Random(seed)
    form = compiled.spec.form
    if keywords:
        words, from_theme = split_keywords(keywords), False
        # Keywords the fixed characters already hold (an acrostic, a kept line) need no place.
        held = ["".join(compiled.fixed.get((i, j), "?") for j in range(form.chars_per_line))
                for i in range(form.lines)]
        words = [w for w in words if not any(w in line for line in held)]
    else:
        if lex is None:
            raise ConstraintError("--theme needs corpus statistics (a lexicon) and none was found; "
                                  "build one with `poetgen corpus lexicon`, or give --keywords")
        words = theme_keywords(theme, lex, compiled.vocab, THEME_KEYWORDS.get(form.lines, 2), rng)
        from_theme = True
    return Plan(theme, words, place_keywords(words, compiled, lex, rng), from_theme)

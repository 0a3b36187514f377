"""Generation metrics: how poems (the model's, or real ones) fare on form, rhyme, tones, variety
and copying, so model and human poems can sit side by side in one table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from poetgen.verse.check import check_poem, distinct_n
from poetgen.lm.corpus import NEWLINE, Vocab, iter_text
from poetgen.lm.evaluate import line_nats
from poetgen.lm.model import CharLSTM
from poetgen.verse.lexicon import Lexicon
from poetgen.verse.prosody import split_verse
from poetgen.verse.repeats import repeated_chars
from poetgen.verse.scores import coherence, middle_parallelism

MIN_COPY = 4  # copied runs shorter than this are ordinary phrasing, not copying


def verse_lines(path) -> set[str]:
    """Every verse line (text between punctuation) of a corpus file."""
    lines: set[str] = set()
    for text in iter_text(path):
        lines.update(split_verse(text))
    return lines


class CopyIndex:
    """Verse lines and every run of MIN_COPY..7 characters inside them, from a training corpus.

    Runs are kept as hashes of short strings, so a 1.5M-character corpus takes ~100 MB.
    """

    def __init__(self, path):
        self.lines = verse_lines(path)
        self.runs: set[int] = set()
        for line in self.lines:
            for k in range(MIN_COPY, len(line) + 1):
                for i in range(len(line) - k + 1):
                    self.runs.add(hash(line[i:i + k]))

    def longest_run(self, poem: str) -> int:
        """Longest run of characters, inside one verse line, that occurs in the corpus (0 if < MIN_COPY)."""
        best = 0
        for line in split_verse(poem):
            for k in range(len(line), max(best, MIN_COPY - 1), -1):
                if any(hash(line[i:i + k]) in self.runs for i in range(len(line) - k + 1)):
                    best = k
                    break
        return best


def mean_logprobs(model: CharLSTM, vocab: Vocab, poems: list[str]) -> list[float]:
    """Per-character log-probability of each poem and its end (newline), each poem read alone
    from the poem-start state (evaluate's "lines" reading, in length-sorted batches)."""
    nats = line_nats(model, [torch.tensor(vocab.encode(p + NEWLINE)) for p in poems])
    return [-float(n.mean()) for n in nats]


@dataclass
class PoemMetrics:
    """Figures of a set of poems of one form; with no poems (a --real file without that form)
    every figure is None: nothing was measured, which 0% would misreport."""

    source: str  # "model" or a file name
    form: str
    poems: int
    form_ok: float | None  # share with the right number of lines and characters
    rhyme_pingshui: float | None  # share whose rhyme positions share a 平水韵 group
    rhyme_modern: float | None  # ... a 中华新韵 group
    tones_loose: float | None  # share with no tone violation against the best template (loose)
    tones_strict: float | None
    distinct_1: float | None
    distinct_2: float | None
    copy_lines: float | None  # share of verse lines found verbatim in the training corpus
    copy_run4: float | None  # share of poems with a copied run of >= 4 characters
    longest_copy: int | None  # longest copied run over all poems
    mean_logprob: float | None  # nats per character under the model
    repeated_rhyme: float | None = 0.0  # share with a rhyme character twice (重韵, as the checker finds)
    repeated_char: float | None = 0.0  # share with a character in two places, 叠字 aside (重字)
    coherence: float | None = None  # mean coherence score (verse.scores), None without a lexicon
    parallelism: float | None = None  # mean 对仗 score of 律诗 middle couplets (None for 绝句)

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def poem_metrics(poems: list[str], form: str, source: str, copy_index: CopyIndex | None = None,
                 logprobs: list[float] | None = None, lexicon: Lexicon | None = None) -> PoemMetrics:
    if not poems:
        figures = [f.name for f in fields(PoemMetrics) if f.name not in ("source", "form", "poems")]
        return PoemMetrics(source, form, 0, **dict.fromkeys(figures))
    n = len(poems)
    checked = [check_poem(p, "pingshui", "loose") for p in poems]
    share = lambda flags: sum(flags) / n  # noqa: E731
    lines = [line for p in poems for line in split_verse(p)]
    copy_lines = copy_run = longest = None
    if copy_index is not None:
        copy_lines = sum(line in copy_index.lines for line in lines) / max(1, len(lines))
        runs = [copy_index.longest_run(p) for p in poems]
        copy_run, longest = share(r >= MIN_COPY for r in runs), max(runs, default=0)
    return PoemMetrics(
        source=source, form=form, poems=len(poems),
        form_ok=share(r.form == form for r in checked),
        rhyme_pingshui=share(r.form == form and r.rhyme_ok for r in checked),
        rhyme_modern=share(r.form == form and check_poem(p, "modern", "off").rhyme_ok
                           for p, r in zip(poems, checked)),
        tones_loose=share(r.form == form and r.tone_violations == 0 for r in checked),
        tones_strict=share(r.form == form and check_poem(p, "pingshui", "strict").tone_violations == 0
                           for p, r in zip(poems, checked)),
        distinct_1=distinct_n(poems, 1), distinct_2=distinct_n(poems, 2),
        copy_lines=copy_lines, copy_run4=copy_run, longest_copy=longest,
        mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
        repeated_rhyme=share(any(v.startswith("重韵") for v in r.violations) for r in checked),
        repeated_char=share(bool(repeated_chars(split_verse(p))) for p in poems),
        coherence=_mean(coherence(split_verse(p), lexicon) for p in poems) if lexicon else None,
        parallelism=_mean(middle_parallelism(split_verse(p), lexicon) for p in poems)
        if lexicon else None,
    )


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None

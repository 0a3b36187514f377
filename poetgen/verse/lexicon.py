"""What a corpus of real poems says about words: which keep company, where they stand in a line,
and which stand opposite each other in a parallel couplet (对仗).

Statistics learned once from the training split (never the validation split) and stored
in a small safetensors file (package data for the bundled model, `poetgen corpus lexicon` for any
other corpus):

    tokens      the corpus's characters (seen >= MIN_CHAR_COUNT times) and its two-character words:
                pairs of characters at a word slot of a line (五言 2+3, 七言 2+2+3) seen
                >= MIN_WORD_COUNT times whose characters stick together (PMI >= MIN_WORD_PMI)
    topic       a vector per token from the co-occurrence of tokens in *different* lines of one
                poem (positive PMI, reduced by SVD). Tokens that poets put in the same poem but not
                the same phrase point the same way: 秋 near 雁 霜 落叶, 送 near 别 故人 离. It
                serves the theme (which words keep company with a theme word) and the coherence
                score (do a poem's lines keep one subject).
    positions   how often each token starts at each position of a 五言 and a 七言 line: where poets
                put a word, so a keyword is placed where it reads naturally.
    parallel    a vector per character from the pairs that stand at the same position of the two
                lines of a middle couplet (lines 3-4 and 5-6) of real 律诗 (positive PMI, SVD).
                Characters that stand opposite similar characters point the same way, so numbers,
                colours, directions, sky and earth, plants and animals form classes without a hand
                list; the dot product of two characters' vectors approximates how much more often
                they face each other than chance.
    doubles     the characters poets double (叠字: 萧萧 悠悠 年年), each seen doubled at least
                MIN_DOUBLED times; the repetition penalty leaves those free, and not 西西 or 为为.

Limits: these are counts, not understanding. A theme word the corpus rarely uses has few reliable
companions (expansion then falls back to the theme's characters); a modern theme (手机) has none.
The topic vectors mix senses (a character's vector is the average of its uses). The parallel
vectors know classes, not grammar: a couplet of matching classes in a nonsensical order scores well.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from poetgen.errors import CorpusError
from poetgen.verse.prosody import is_han, split_verse

FORMAT = "poetgen-lexicon/1"
MIN_POEMS = 50  # fewer poems give statistics of nothing
MIN_DOUBLED = 10  # a character doubled this often in the corpus is a 叠字 poets use
MIN_CHAR_COUNT = 3
MIN_WORD_COUNT = 12
MIN_WORD_PMI = 2.5
TOPIC_DIM = 96
PARALLEL_DIM = 48
CONTEXT_SMOOTHING = 0.75  # PMI with context counts raised to 0.75 (Levy, Goldberg & Dagan 2015)
WORD_SLOTS = {5: ((0, 2), (2, 4), (3, 5)), 7: ((0, 2), (2, 4), (4, 6), (5, 7))}
POSITION_COLUMNS = {5: 0, 7: 5}  # positions: columns 0-4 for 五言, 5-11 for 七言
BUNDLED = "data/lexicon.safetensors"
SIF = 3e-4  # smooth inverse frequency constant: a token of relative frequency 3e-4 weighs 1/2
BOUND_SHARE = 0.4  # a character whose commonest word holds this share of its uses is "bound"


@dataclass
class Lexicon:
    tokens: list[str]  # characters first, then two-character words
    counts: np.ndarray  # (N,) occurrences in the corpus
    topic: np.ndarray  # (N, TOPIC_DIM) U·sqrt(S): dot product ~ PMI of keeping company
    positions: np.ndarray  # (N, 12) how often the token starts at each position (五言 0-4, 七言 0-6)
    parallel_chars: list[str]  # characters with a parallel vector
    parallel: np.ndarray  # (C, PARALLEL_DIM), dot product ~ PMI of facing each other
    meta: dict
    doubles: str = ""  # characters real poems double (萧萧), each seen doubled >= MIN_DOUBLED times

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.parallel_index = {c: i for i, c in enumerate(self.parallel_chars)}

    # -- storage ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save

        from poetgen.files import atomic_write_bytes

        meta = dict(self.meta, format=FORMAT)
        data = save({"counts": np.ascontiguousarray(self.counts, dtype=np.int32),
                     "topic": np.ascontiguousarray(self.topic, dtype=np.float16),
                     "positions": np.ascontiguousarray(self.positions, dtype=np.int32),
                     "parallel": np.ascontiguousarray(self.parallel, dtype=np.float16)},
                    metadata={"meta": json.dumps(meta, ensure_ascii=False),
                              "tokens": json.dumps(self.tokens, ensure_ascii=False),
                              "parallel_chars": json.dumps(self.parallel_chars, ensure_ascii=False),
                              "doubles": self.doubles})
        atomic_write_bytes(Path(path), data)

    @classmethod
    def load(cls, path: str | Path) -> "Lexicon":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"{path}: no lexicon file there; build one with "
                              "`poetgen corpus lexicon CORPUS -o FILE`")
        try:
            with safe_open(str(path), framework="numpy") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(header["meta"])
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            return cls(json.loads(header["tokens"]), tensors["counts"].astype(np.int64),
                       tensors["topic"].astype(np.float32), tensors["positions"].astype(np.int64),
                       json.loads(header["parallel_chars"]), tensors["parallel"].astype(np.float32),
                       meta, header["doubles"])
        except (KeyError, ValueError, OSError, SafetensorError) as e:
            raise CorpusError(f"{path}: not a poetgen lexicon ({e}); rebuild it with "
                              "`poetgen corpus lexicon CORPUS -o FILE`") from None

    # -- lookups ---------------------------------------------------------------------------------
    def tokens_of(self, line: str) -> list[int]:
        """Token ids in a verse line: every character, and every word at a word slot."""
        ids = [self.index[c] for c in line if c in self.index]
        for a, b in WORD_SLOTS.get(len(line), ()):
            if line[a:b] in self.index:
                ids.append(self.index[line[a:b]])
        return ids

    def tokens_in(self, text: str) -> list[int]:
        """Token ids in free text (a theme, a title): the text itself if it is a token, its
        characters, and every two-character word inside it."""
        parts = split_verse(text)
        ids = [self.index[p] for p in parts if p in self.index and len(p) > 1]
        ids += [self.index[c] for p in parts for c in p if c in self.index]
        ids += [self.index[p[i:i + 2]] for p in parts for i in range(len(p) - 1)
                if len(p) > 2 and p[i:i + 2] in self.index]
        return ids

    @property
    def weights(self) -> np.ndarray:
        """(N,) how much a token says about a subject: smooth inverse frequency (Arora et al.
        2017), so 不 人 无 count little and 雁 霜 count much."""
        if not hasattr(self, "_weights"):
            p = self.counts.astype(np.float32) / self.meta["characters"]
            self._weights = SIF / (SIF + p)
        return self._weights

    def topic_units(self, dim: int) -> np.ndarray:
        """(N, dim) unit vectors from the first `dim` topic components (the broadest subjects)."""
        cache = self.__dict__.setdefault("_units", {})
        if dim not in cache:
            v = self.topic[:, :dim]
            cache[dim] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
        return cache[dim]

    def bound_chars(self) -> set[str]:
        """Characters that mostly occur inside one word (蟋 in 蟋蟀, 茱 in 茱萸): a keyword should be
        the word, not the half."""
        if not hasattr(self, "_bound"):
            best: dict[str, int] = {}
            for t, n in zip(self.tokens, self.counts.tolist()):
                if len(t) == 2:
                    for c in t:
                        best[c] = max(best.get(c, 0), n)
            self._bound = {c for c, n in best.items()
                           if c in self.index and n >= BOUND_SHARE * int(self.counts[self.index[c]])}
        return self._bound


@cache
def bundled() -> Lexicon:
    """The lexicon built from tang_train, shipped with the bundled model."""
    return Lexicon.load(Path(str(resources.files("poetgen").joinpath(BUNDLED))))


RUN_FILE = "lexicon.safetensors"  # a run directory's own lexicon, beside its checkpoints


def lexicon_for(checkpoint: str | Path) -> Lexicon:
    """The lexicon of a checkpoint's corpus: RUN_FILE in its directory if there is one (built with
    `poetgen corpus lexicon CORPUS -o RUN_DIR/lexicon.safetensors`), else the bundled Tang one."""
    own = Path(checkpoint).parent / RUN_FILE
    return _load_cached(own) if own.is_file() else bundled()


@cache
def _load_cached(path: Path) -> Lexicon:
    return Lexicon.load(path)


# ------------------------------------------------------------------------------------------------
# Building


def build_lexicon(poems: list[str], source: str = "", source_sha256: str = "") -> Lexicon:
    """The three statistics of `poems` (one poem per string)."""
    import torch

    poems = [[line for line in split_verse(p) if line and all(is_han(c) for c in line)]
             for p in poems]
    poems = [p for p in poems if len(p) >= 2]
    if len(poems) < MIN_POEMS:
        raise CorpusError(f"{source or 'the corpus'}: {len(poems)} poems of Chinese verse (lines "
                          f"split by ，。); corpus statistics need at least {MIN_POEMS}")
    # -- tokens: characters, and two-character words that stick together --------------------------
    chars = Counter(c for p in poems for line in p for c in line)
    total_chars = sum(chars.values())
    slot_words = Counter(line[a:b] for p in poems for line in p
                         for a, b in WORD_SLOTS.get(len(line), ()))
    doubled = Counter(line[i] for p in poems for line in p for i in range(len(line) - 1)
                      if line[i] == line[i + 1])
    words = [w for w, n in slot_words.items()
             if n >= MIN_WORD_COUNT and w[0] != w[1]
             and math.log(n * total_chars / (chars[w[0]] * chars[w[1]])) >= MIN_WORD_PMI]
    char_list = [c for c, n in chars.most_common() if n >= MIN_CHAR_COUNT]
    words.sort(key=lambda w: -slot_words[w])
    tokens = char_list + words
    counts = np.array([chars[t] if len(t) == 1 else slot_words[t] for t in tokens], dtype=np.int64)

    # -- topic: co-occurrence across the lines of a poem; positions: where tokens start ----------
    lines, positions = _line_tokens(poems, {t: i for i, t in enumerate(tokens)})
    shape = (lines.poem_of_line, lines.count, len(poems), len(tokens))
    cooc = _cross_line_pairs(*lines.tokens, *shape)
    # Line ends rhyme with each other: without this, 安 would keep company with 端 宽 鞍 (寒).
    cooc -= _cross_line_pairs(*lines.ends, *shape)
    cooc.fill_diagonal_(0)
    topic = _ppmi_svd(cooc, TOPIC_DIM, unit=False)
    del cooc

    # -- parallel: which characters face each other in the middle couplets of 律诗 ---------------
    facing, couplets = _facing_counts(poems, char_list)
    parallel = _ppmi_svd(torch.from_numpy(facing), PARALLEL_DIM, unit=False)
    from poetgen import __version__

    meta = {"source": source, "source_sha256": source_sha256, "built_by": f"poetgen {__version__}",
            "poems": len(poems), "characters": total_chars,
            "lines": lines.count, "middle_couplets": couplets,
            "min_char_count": MIN_CHAR_COUNT, "min_word_count": MIN_WORD_COUNT,
            "min_word_pmi": MIN_WORD_PMI, "topic_dim": TOPIC_DIM, "parallel_dim": PARALLEL_DIM,
            "min_doubled": MIN_DOUBLED}
    doubles = "".join(c for c, n in doubled.most_common() if n >= MIN_DOUBLED)
    return Lexicon(tokens, counts, topic.numpy(), positions, char_list, parallel.numpy(), meta,
                   doubles)


@dataclass
class _LineTokens:
    """Which tokens each line holds, as sparse (line, token) pairs for _cross_line_pairs."""

    tokens: tuple[list[int], list[int]]  # every token of a line
    ends: tuple[list[int], list[int]]  # a line's rhyme character and the word that holds it
    poem_of_line: list[int]
    count: int  # lines


def _line_tokens(poems: list[list[str]], index: dict[str, int]) -> tuple[_LineTokens, np.ndarray]:
    """The tokens of every line, and (N, 12) counts of where each token starts in a 五言 line
    (columns 0-4) and a 七言 line (5-11)."""
    positions = np.zeros((len(index), 12), dtype=np.int64)
    rows, cols, end_rows, end_cols, poem_of_line = [], [], [], [], []
    for pi, p in enumerate(poems):
        for line in p:
            for end in (line[-1], line[-2:]):  # the rhyme, and the word that holds it
                if end in index:
                    end_rows.append(len(poem_of_line))
                    end_cols.append(index[end])
            ids = set()
            col0 = POSITION_COLUMNS.get(len(line))
            for j, c in enumerate(line):
                if c in index:
                    ids.add(index[c])
                    if col0 is not None:
                        positions[index[c], col0 + j] += 1
            for a, b in WORD_SLOTS.get(len(line), ()):
                if line[a:b] in index:
                    ids.add(index[line[a:b]])
                    positions[index[line[a:b]], col0 + a] += 1
            rows += [len(poem_of_line)] * len(ids)
            cols += sorted(ids)
            poem_of_line.append(pi)
    lines = _LineTokens((rows, cols), (end_rows, end_cols), poem_of_line, len(poem_of_line))
    return lines, positions


def _facing_counts(poems: list[list[str]], chars: list[str]) -> tuple[np.ndarray, int]:
    """(C, C) counts of characters at the same position of the two lines of a middle couplet
    (lines 3-4 and 5-6 of a regular 8-line poem), both ways, and the number of couplets."""
    index = {c: i for i, c in enumerate(chars)}
    facing = np.zeros((len(chars), len(chars)), dtype=np.float32)
    couplets = 0
    for p in poems:
        if len(p) != 8 or len({len(x) for x in p}) != 1:
            continue
        for a, b in ((p[2], p[3]), (p[4], p[5])):
            couplets += 1
            for x, y in zip(a, b):
                if x in index and y in index and x != y:
                    facing[index[x], index[y]] += 1
                    facing[index[y], index[x]] += 1
    return facing, couplets


def _cross_line_pairs(rows: list[int], cols: list[int], poem_of_line: list[int], nlines: int,
                      npoems: int, N: int):
    """(N, N) for tokens x, y: pairs (a line holding x, another line of the same poem holding y).

    Sparse products: (poem x token)^T (poem x token) counts pairs of lines in one poem, the
    line's own pairs (line x token)^T (line x token) are taken out."""
    import warnings

    import torch

    with torch.sparse.check_sparse_tensor_invariants(True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        lines = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long),
                                        torch.ones(len(rows)), (nlines, N)).coalesce()
        poem = torch.sparse_coo_tensor(torch.tensor([poem_of_line, list(range(nlines))]),
                                       torch.ones(nlines), (npoems, nlines)).coalesce()
        in_poem = torch.sparse.mm(poem, lines)
        return (torch.sparse.mm(in_poem.t(), in_poem) - torch.sparse.mm(lines.t(), lines)).to_dense()


def _ppmi_svd(cooc, dim: int, unit: bool = True):
    """Rows of U·sqrt(S) from the truncated SVD of the positive PMI of a co-occurrence matrix
    (contexts smoothed by CONTEXT_SMOOTHING); unit rows if `unit`."""
    import torch

    total = cooc.sum()
    row = cooc.sum(1, keepdim=True)
    ctx = cooc.sum(0, keepdim=True) ** CONTEXT_SMOOTHING
    ctx = ctx / ctx.sum() * total
    pmi = torch.log((cooc * total).clamp_min(1e-12) / (row * ctx).clamp_min(1e-12))
    pmi = torch.where(cooc > 0, pmi.clamp_min(0), torch.zeros(()))
    torch.manual_seed(0)  # svd_lowrank starts from a random projection: fix it, same file every build
    U, S, _ = torch.svd_lowrank(pmi, q=dim, niter=6)
    vectors = U * S.sqrt()
    if unit:
        vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return vectors

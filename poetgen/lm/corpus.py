"""Reading text, building the character vocabulary, and cutting the token stream into batches.

A corpus is one poem (document) per line, or running text (prose, plays: paragraphs separated by
blank lines); `detect_text_kind` tells them apart, and the model records which it learned. The
newline is an ordinary token: in a corpus of lines it is how the model learns where a poem ends,
and what the sampler stops on; in running text it is just a line break.
"""

from __future__ import annotations

import codecs
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poetgen.errors import CorpusError
from poetgen.lm.config import TrainConfig

NEWLINE = "\n"
UNK = "\ufffd"  # stands for every character outside the vocabulary (U+FFFD REPLACEMENT CHARACTER)


# --------------------------------------------------------------------------------------------
# Reading


def iter_text(path: str | Path, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """Yield the file's text in chunks, decoded strictly as UTF-8, with newlines normalised.

    Streaming keeps memory bounded for `poetgen eval` on big files. `\\r\\n` and lone `\\r` become
    `\\n`; a leading byte-order mark is dropped. Invalid bytes raise CorpusError naming the line and
    byte offset, since "not UTF-8" alone does not help anyone find a bad byte in a 5 MB file.
    """
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise CorpusError(f"{p}: is a directory; give a UTF-8 text file")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0  # bytes consumed before the current chunk
    line = 1  # line number at the start of the current chunk
    pending_cr = False
    first = True
    with p.open("rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                at_line = line + raw[: e.start].count(b"\n")
                col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) if b"\n" in raw[: e.start] else None
                where = f"line {at_line}" + (f", column {col + 1}" if col is not None else "")
                raise CorpusError(
                    f"{p}: not valid UTF-8 at byte {bad} ({where}): {e.reason} "
                    f"(byte 0x{raw[e.start]:02x}); re-save the file as UTF-8, e.g. "
                    f"`iconv -f GB18030 -t UTF-8 {p.name} > fixed.txt`") from None
            offset += len(raw)
            line += raw.count(b"\n")
            if first and text.startswith("\ufeff"):
                text = text[1:]
            first = first and not text
            if pending_cr:
                text = "\r" + text
            pending_cr = text.endswith("\r") and bool(raw)
            if pending_cr:
                text = text[:-1]
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if not raw:
                return


def iter_lines(path: str | Path) -> Iterator[str]:
    """The file's lines (without newlines), streamed: bounded memory for any file size."""
    pending = ""
    for text in iter_text(path):
        parts = (pending + text).split("\n")
        pending = parts.pop()
        yield from parts
    if pending:
        yield pending


def read_text(path: str | Path) -> str:
    """The whole file as one normalised string; fails clearly if it holds no text."""
    text = "".join(iter_text(path))
    if not text.strip():
        raise CorpusError(f"{path}: the file is empty or only whitespace; a corpus needs text, "
                          "one poem (or paragraph) per line")
    return text


def held_out(key: str, fraction: float) -> bool:
    """Whether `key` belongs to the held-out (validation) share `fraction`, by a hash of its text.

    Hashing (not position) makes the split deterministic, independent of order, and keeps equal
    keys on the same side. Used by `split_lines` (key: a line) and `corpus build --val-fraction`
    (key: a group of poems sharing a verse line). round(), not a float comparison or int(): 0.07
    means 700 of the 10,000 buckets, though 0.07 * 10_000 is 700.0000000000001.
    """
    return zlib.crc32(key.encode("utf-8")) % 10_000 < round(fraction * 10_000)


def split_lines(text: str, val_fraction: float) -> tuple[str, str]:
    """Hold out about `val_fraction` of the lines, chosen by `held_out` on each line's text.

    A text with too few lines for that falls back to holding out its tail.
    """
    lines = text.splitlines(keepends=True)
    train, val = [], []
    for ln in lines:
        (val if held_out(ln, val_fraction) else train).append(ln)
    if not train or not val:
        cut = max(1, int(len(text) * (1 - val_fraction)))
        return text[:cut], text[cut:]
    return "".join(train), "".join(val)


# --------------------------------------------------------------------------------------------
# Vocabulary


@dataclass(frozen=True)
class Vocab:
    """Characters by descending frequency (ids in that order suit the adaptive softmax), then UNK."""

    chars: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    @classmethod
    def build(cls, text: str, min_count: int = 1, max_size: int = 0) -> "Vocab":
        counts = Counter(text)
        counts.pop(UNK, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [c for c, n in ranked if n >= min_count]
        if max_size:
            kept = kept[: max(1, max_size - 1)]  # one place is the unknown token's
        return cls(tuple(kept) + (UNK,))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self._index and ch != UNK

    @property
    def unk_id(self) -> int:
        return len(self.chars) - 1

    @property
    def newline_id(self) -> int | None:
        return self._index.get(NEWLINE)

    def id(self, ch: str) -> int:
        return self._index.get(ch, self.unk_id)

    def encode(self, text: str) -> list[int]:
        get, unk = self._index.get, self.unk_id
        return [get(c, unk) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def unknown(self, text: str) -> list[str]:
        """Distinct characters of `text` the vocabulary lacks, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self))

    def to_json(self) -> str:
        return json.dumps(list(self.chars), ensure_ascii=False)

    @classmethod
    def from_list(cls, chars: list[str]) -> "Vocab":
        if not chars or chars[-1] != UNK or len(set(chars)) != len(chars):
            raise ValueError("a vocabulary is a list of distinct characters ending with U+FFFD")
        return cls(tuple(chars))


BLANK_LINE_SHARE = 0.01  # a text with more blank lines than this share of its lines is running text


def detect_text_kind(ids: torch.Tensor, newline_id: int | None) -> str:
    """"lines" if the token stream reads as one document per line, else "running".

    A corpus of one document per line (poems, names, sentences) has no blank lines, while
    running text (prose, plays, code) separates its paragraphs, speeches or blocks with them:
    tang_train.txt has none in 33,473 lines, tinyshakespeare.txt 7,223 in 40,000. A text with
    no line break at all is running text. `train --text-kind` overrides the guess.
    """
    if newline_id is None:
        return "running"
    is_newline = ids == newline_id
    lines = int(is_newline.sum())
    if lines < 2:
        return "running"
    blank = int((is_newline[1:] & is_newline[:-1]).sum()) + int(is_newline[0])
    return "running" if blank >= BLANK_LINE_SHARE * lines else "lines"


def text_kind_of(text: str) -> str:
    """detect_text_kind on a string, before any vocabulary exists (code points stand for ids)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    return detect_text_kind(torch.from_numpy(codes), ord(NEWLINE))


def split_text(text: str, val_fraction: float, kind: str) -> tuple[str, str]:
    """(train, val) of a corpus without a separate validation file.

    One document per line ("lines"): `split_lines`, by a hash of each line. Running text: the
    last `val_fraction` of the characters, cut where nanoGPT cuts tinyshakespeare
    (`data[int(n * 0.9):]` for 0.1), because neighbouring lines of a play or a novel share
    names and sentences: a hashed split would score the model on text it has half seen.
    """
    if kind == "running":
        cut = int(len(text) * (1 - val_fraction))
        return text[:cut], text[cut:]
    return split_lines(text, val_fraction)


def encode_tensor(vocab: Vocab, text: str) -> torch.Tensor:
    return torch.tensor(vocab.encode(text), dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Training data: the one way `poetgen train`, bench/ and the tests turn text into id streams


@dataclass
class TrainingData:
    vocab: Vocab
    train_ids: torch.Tensor  # 1-D, the whole training text
    val_ids: torch.Tensor  # 1-D, the validation text (held out, or the --val file)
    text_kind: str = "lines"  # "lines" or "running", as decided (see detect_text_kind)


def prepare(train_path: str | Path, val_path: str | Path | None, config: TrainConfig,
            vocab: Vocab | None = None, kind: str = "auto") -> TrainingData:
    """Read the training file (and the validation file, if any) and encode them: see prepare_text."""
    return prepare_text(read_text(train_path), read_text(val_path) if val_path else None,
                        config, vocab, kind)


def prepare_text(train_text: str, val_text: str | None, config: TrainConfig,
                 vocab: Vocab | None = None, kind: str = "auto") -> TrainingData:
    """Encode a training text and its validation text for `train`.

    `kind` ("lines", "running", or "auto": decided on the whole training text, before any split)
    is what the text is. Without `val_text`, `config.val_fraction` is held out by `split_text`:
    hashed lines of one document per line, the end of running text. The vocabulary is built from
    the training side only, with `config.min_count` and `config.max_vocab`, unless `vocab` is
    given (a resumed or --init run keeps its checkpoint's).
    """
    if kind == "auto":
        kind = text_kind_of(train_text)
    if val_text is None:
        train_text, val_text = split_text(train_text, config.val_fraction, kind)
    vocab = vocab or Vocab.build(train_text, config.min_count, config.max_vocab)
    return TrainingData(vocab, encode_tensor(vocab, train_text), encode_tensor(vocab, val_text),
                        kind)


# --------------------------------------------------------------------------------------------
# Batching for truncated backpropagation through time


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into `batch_size` contiguous streams, one per column.

    With the stream a b c d e f g h i j k l m n o p q r s t u v w x and batch_size 4:

        ┌ a g m s ┐
        │ b h n t │    Each column is one stream. Training reads the rows in chunks of `bptt`
        │ c i o u │    (here 2: rows ab, cd, ef); chunk k of column j continues chunk k-1 of
        │ d j p v │    column j, so the LSTM state left by one chunk is the right state to start
        │ e k q w │    the next: it is carried over (detached, so gradients stop at the chunk
        └ f l r x ┘    boundary: that is the "truncated" in truncated BPTT).

    The tail that does not fill a whole row is dropped (fewer than `batch_size` tokens).
    """
    rows = ids.numel() // batch_size
    if rows < 2:
        raise CorpusError(f"the text has {ids.numel()} characters, too few for batch size "
                          f"{batch_size}; use a smaller --batch-size or a longer corpus")
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()  # (rows, batch)


def num_chunks(data: torch.Tensor, bptt: int) -> int:
    """Chunks in one pass over batchified `data` (each needs one extra row for its targets)."""
    return (data.size(0) - 2) // bptt + 1


def get_chunk(data: torch.Tensor, index: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets of chunk `index`, each (seq_len, batch)."""
    start = index * bptt
    seq_len = min(bptt, data.size(0) - 1 - start)
    return data[start : start + seq_len], data[start + 1 : start + 1 + seq_len]

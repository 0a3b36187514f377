"""Reading text, building the character vocabulary, and cutting the token stream into batches.

A corpus is one poem (document) per line, or running text (prose, plays: paragraphs separated by
blank lines); `detect_text_kind` tells them apart, and the model records which it learned. The
newline is an ordinary token: in a corpus of lines it is how the model learns where a poem ends,
and what the sampler stops on; in running text it is just a line break.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

from poetgen.errors import ConfigError, CorpusError, PoetgenError, file_error
from poetgen.lm.config import TrainConfig

NEWLINE = "\n"
UNK = "\ufffd"  # stands for every character outside the vocabulary (U+FFFD REPLACEMENT CHARACTER)

# A 1-D sequence of token ids: a tensor (a text encoded in memory) or a NumPy array, typically a
# read-only np.memmap of a prepared corpus (poetgen/lm/prepared.py) larger than memory. Code that
# must not grow with the corpus reads it through the functions of "Token ids" below, a bounded
# piece at a time.
Ids = Union[torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------------------------
# Reading


def input_file(path: str | Path, missing: str, error: type[PoetgenError] = CorpusError) -> Path:
    """`path` if it names a regular file; otherwise `error` (or FileSystemError) in one line.

    `missing` says what to do when nothing is there. Devices, pipes and sockets are refused:
    `/dev/zero` as a corpus would otherwise be read until memory runs out.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        if p.is_symlink():
            raise error(f"{p}: a symbolic link to {os.readlink(p)}, which does not exist; "
                        "fix the link") from None
        raise error(f"{p}: {missing}") from None
    except OSError as e:  # a symbolic link loop, a parent without permission, a name too long
        raise file_error(p, e, "read") from None
    if stat.S_ISDIR(mode):
        raise error(f"{p}: is a directory; give a file")
    if not stat.S_ISREG(mode):
        raise error(f"{p}: not a regular file (a device, pipe or socket); give a file saved on disk")
    return p


def iter_text(path: str | Path, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """Yield the file's text in chunks, decoded strictly as UTF-8, with newlines normalised.

    Streaming keeps memory bounded for `poetgen eval` on big files. `\\r\\n` and lone `\\r` become
    `\\n`; a leading byte-order mark is dropped. Invalid bytes raise CorpusError naming the line and
    byte offset, since "not UTF-8" alone does not help anyone find a bad byte in a 5 MB file.
    """
    p = input_file(path, "file not found; check the path")
    try:
        yield from _decode_chunks(p, chunk_bytes)
    except OSError as e:
        raise file_error(p, e, "read") from None


def _decode_chunks(p: Path, chunk_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0  # bytes read before the current chunk
    line = 1  # line number at the start of the current chunk
    line_start = 0  # byte offset where the line the current chunk starts in begins
    pending_cr = False
    first = True
    with p.open("rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                # e.object is what the decoder saw: the bytes it held back from the previous chunk
                # (an unfinished character) followed by this chunk, so offsets count from there.
                seen = e.object
                base = offset - (len(seen) - len(raw))  # byte offset of seen[0]
                start = base + e.start
                before = seen[: e.start]
                at_line = line + before.count(b"\n")
                newline = before.rfind(b"\n")
                column = start - (base + newline + 1 if newline >= 0 else line_start) + 1
                where = f"line {at_line}, column {column}"  # a byte column, as the offset
                reason = "the file ends inside a character" if not raw else e.reason
                # A UTF-16 byte-order mark says what the file is; else Chinese text that is not
                # UTF-8 is most often GB18030 (GBK).
                source = "UTF-16" if offset == 0 and seen[:2] in (b"\xff\xfe", b"\xfe\xff") \
                    else "GB18030"
                raise CorpusError(
                    f"{p}: not valid UTF-8 at byte {start} ({where}): {reason} "
                    f"(byte 0x{seen[e.start]:02x}); re-save the file as UTF-8, e.g. "
                    f"`iconv -f {source} -t UTF-8 {p.name} > fixed.txt`") from None
            if (newline := raw.rfind(b"\n")) >= 0:
                line_start = offset + newline + 1
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


def lines_with_ends(text: str) -> list[str]:
    """The lines of `text`, each with its "\\n" (the last one without, if the text lacks it).

    Only "\\n" ends a line (not str.splitlines' other separators), so that `poetgen corpus
    encode`, which reads a file in pieces, splits it exactly as this does.
    """
    lines = [line + NEWLINE for line in text.split(NEWLINE)]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def split_lines(text: str, val_fraction: float) -> tuple[str, str]:
    """Hold out about `val_fraction` of the lines, chosen by `held_out` on each line's text
    (newline included).

    A text with too few lines for that falls back to holding out its tail.
    """
    train, val = [], []
    for ln in lines_with_ends(text):
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
        return cls.from_counts(Counter(text), min_count, max_size)

    @classmethod
    def from_counts(cls, counts: dict[str, int], min_count: int = 1, max_size: int = 0) -> "Vocab":
        """The vocabulary of a text whose character counts are `counts` (see `build`)."""
        counts = {c: n for c, n in counts.items() if c != UNK and n > 0}
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [c for c, n in ranked if n >= min_count]
        if max_size:
            kept = kept[: max(1, max_size - 1)]  # one place is the unknown token's
        if NEWLINE in counts and NEWLINE not in kept:  # however rare, it ends a poem
            kept.append(NEWLINE)
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

    @classmethod
    def from_list(cls, chars: list[str]) -> "Vocab":
        if not chars or chars[-1] != UNK or len(set(chars)) != len(chars):
            raise ValueError("a vocabulary is a list of distinct characters ending with U+FFFD")
        return cls(tuple(chars))


BLANK_LINE_SHARE = 0.01  # a text with more blank lines than this share of its lines is running text


def detect_text_kind(ids: Ids, newline_id: int | None) -> str:
    """"lines" if the token stream reads as one document per line, else "running".

    A corpus of one document per line (poems, names, sentences) has no blank lines, while
    running text (prose, plays, code) separates its paragraphs, speeches or blocks with them:
    tang_train.txt has none in 33,473 lines, tinyshakespeare.txt 7,223 in 40,000. A text with
    no line break at all is running text. `train --text-kind` overrides the guess.
    """
    counter = LineCounter(newline_id)
    for piece in id_pieces(ids):
        counter.update(piece)
    return counter.kind()


class LineCounter:
    """The lines and blank lines of a token stream fed in pieces: what detect_text_kind decides
    by (`corpus encode` feeds it text it reads in pieces)."""

    def __init__(self, newline_id: int | None):
        self.newline_id = newline_id
        self.lines = self.blank = 0
        self._after_newline = True  # a newline at the very start is a blank line

    def update(self, piece: Ids) -> None:
        is_newline = as_array(piece) == self.newline_id
        if self.newline_id is None or not len(is_newline):
            return
        self.lines += int(is_newline.sum())
        self.blank += int((is_newline[1:] & is_newline[:-1]).sum())
        self.blank += int(bool(is_newline[0]) and self._after_newline)
        self._after_newline = bool(is_newline[-1])

    def kind(self) -> str:
        if self.newline_id is None or self.lines < 2:
            return "running"
        return "running" if self.blank >= BLANK_LINE_SHARE * self.lines else "lines"


def text_kind_of(text: str) -> str:
    """detect_text_kind on a string, before any vocabulary exists (code points stand for ids)."""
    counter = LineCounter(ord(NEWLINE))
    counter.update(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    return counter.kind()


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
    train_ids: Ids  # 1-D, the whole training text (memory-mapped for a prepared corpus)
    val_ids: Ids  # 1-D, the validation text (held out, or the --val file)
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
        if not val_text:
            raise ConfigError(f"val_fraction {config.val_fraction:g} holds out no text of "
                              f"{len(train_text):,} characters; raise it, or give --val FILE")
    vocab = vocab or Vocab.build(train_text, config.min_count, config.max_vocab)
    if not any(c not in (UNK, NEWLINE) for c in vocab.chars):
        raise ConfigError(f"min_count {config.min_count} and max_vocab {config.max_vocab} keep no "
                          "character of the text to learn; lower min_count (1 keeps every one)")
    return TrainingData(vocab, encode_tensor(vocab, train_text), encode_tensor(vocab, val_text),
                        kind)


# --------------------------------------------------------------------------------------------
# Token ids in memory or memory-mapped: what `train` reads, whatever the corpus size

PIECE_TOKENS = 1 << 20  # tokens per piece when a whole sequence is scanned (8 MiB as int64)


def as_array(ids: Ids) -> np.ndarray:
    """A NumPy view of `ids` (no copy): a CPU tensor's memory, or the array itself."""
    return ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else ids


def id_pieces(ids: Ids, start: int = 0, stop: int | None = None,
              size: int = PIECE_TOKENS) -> Iterator[torch.Tensor]:
    """`ids[start:stop]` as int64 tensors of at most `size` tokens (only these are in memory)."""
    array = as_array(ids)
    stop = len(array) if stop is None else stop
    for i in range(start, stop, size):
        yield torch.from_numpy(np.asarray(array[i : min(stop, i + size)], dtype=np.int64))


class Fingerprinter:
    """The fingerprint of an id sequence, fed in pieces: the first 16 hex digits of the SHA-256 of
    its ids as little-endian int64, so a text encoded in memory and the same text prepared on disk
    (any dtype) have the same fingerprint, and a run may be resumed from either."""

    def __init__(self):
        self._hash = hashlib.sha256()

    def update(self, ids: Ids) -> None:
        self._hash.update(np.ascontiguousarray(as_array(ids), dtype="<i8"))  # no copy if int64

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:16]


def fingerprint(ids: Ids) -> str:
    f = Fingerprinter()
    for piece in id_pieces(ids):
        f.update(piece)
    return f.hexdigest()


def count_id(ids: Ids, token: int) -> int:
    """How many times `token` occurs in `ids` (read in pieces)."""
    return sum(int((piece == token).sum()) for piece in id_pieces(ids))


def tail_after_newline(ids: Ids, vocab: Vocab, length: int) -> torch.Tensor:
    """The last `length` ids ending just after the last newline (the very end if there is none)."""
    array = as_array(ids)
    end = len(array)
    newline = vocab.newline_id
    if newline is not None:
        for stop in range(len(array), 0, -PIECE_TOKENS):  # search backwards, a piece at a time
            piece = np.asarray(array[max(0, stop - PIECE_TOKENS) : stop])
            found = np.flatnonzero(piece == newline)
            if found.size:
                end = stop - len(piece) + int(found[-1]) + 1
                break
    return torch.from_numpy(np.asarray(array[max(0, end - length) : end], dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Batching for truncated backpropagation through time


def shuffle_lines(ids: torch.Tensor, newline_id: int | None, seed: int) -> torch.Tensor:
    """The lines of a 1-D token stream (each with its newline) in a random order set by `seed`.

    Training on one document per line reorders the documents at every epoch, so that the streams
    do not meet the same poems side by side and in the same order each pass (with a fixed order a
    model can learn the order itself: the train bpc falls while the val bpc rises). It makes a
    reordered copy, so `train` applies it to ids in memory only, not to a memory-mapped corpus.
    """
    if newline_id is None:
        return ids
    ends = (ids == newline_id).nonzero().view(-1) + 1  # exclusive end of every complete line
    if ends.numel() < 2:
        return ids
    starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
    order = torch.randperm(ends.numel(), generator=torch.Generator().manual_seed(seed))
    lengths = (ends - starts)[order]
    placed = torch.cumsum(lengths, 0) - lengths  # where each line starts in the output
    index = torch.arange(int(ends[-1])) + torch.repeat_interleave(starts[order] - placed, lengths)
    return torch.cat([ids[index], ids[int(ends[-1]):]])  # a last line without a newline stays last


class Streams:
    """A token sequence cut into `batch_size` contiguous streams, read a chunk of `bptt` at a time.

    With the ids a b c d e f g h i j k l m n o p q r s t u v w x, batch_size 4 and bptt 2:

        stream 0  1  2  3
             ┌ a  g  m  s ┐ ← chunk 0 reads rows a..b as inputs and b..c as targets
             │ b  h  n  t │
             │ c  i  o  u │ ← chunk 1: rows c..d -> d..e
             │ d  j  p  v │
             │ e  k  q  w │ ← chunk 2: row e -> f (the last chunk may be shorter)
             └ f  l  r  x ┘

    Each stream (column) is one contiguous stretch of the text. Chunk k of a stream continues
    chunk k-1, so the LSTM state left by one chunk is the right state to start the next: it is
    carried over (detached, so gradients stop at the chunk boundary: that is the "truncated" in
    truncated BPTT). The tail that does not fill a whole row is dropped (< batch_size tokens).

    Nothing is copied up front: a chunk gathers its (bptt + 1) x streams ids from `ids`, which
    may be memory-mapped, so memory does not grow with the corpus. `streams` selects the columns
    this process trains on: in distributed training each rank owns a share of them.
    """

    def __init__(self, ids: Ids, batch_size: int, bptt: int, streams: range | None = None):
        array = as_array(ids)
        self.rows = len(array) // batch_size
        if self.rows < 2:
            raise CorpusError(f"the text has {len(array)} characters, too few for batch size "
                              f"{batch_size}; use a smaller --batch-size or a longer corpus")
        self.bptt = bptt
        self.streams = streams if streams is not None else range(batch_size)
        self.ids = array[: self.rows * batch_size]  # the ids the streams cover, in order
        # Row j of the table is stream j: a view of the ids (reshape copies nothing).
        self._table = self.ids.reshape(batch_size, self.rows)

    def __len__(self) -> int:
        """Chunks in one pass (each needs one extra row for its targets)."""
        return (self.rows - 2) // self.bptt + 1

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets of chunk `index`: int64 (seq_len, streams), each."""
        start = index * self.bptt
        seq_len = min(self.bptt, self.rows - 1 - start)
        block = self._table[self.streams.start : self.streams.stop, start : start + seq_len + 1]
        block = torch.from_numpy(np.ascontiguousarray(block.T, dtype=np.int64))
        return block[:-1], block[1:]

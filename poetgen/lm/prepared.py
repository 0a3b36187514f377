"""Prepared corpora: token ids on disk, memory-mapped by `train`, for corpora larger than memory.

`poetgen corpus encode FILE… -o DIR` reads UTF-8 text once or twice in pieces and writes

    DIR/corpus.json                     format, vocabulary, dtype, and for each side (train, val)
                                        its file, token count, fingerprint and unknown-token
                                        count; the settings that made the vocabulary; the sources
    DIR/train-<fingerprint>-uint16.ids  the training ids, little-endian uint16 (uint32 when the
    DIR/val-<fingerprint>-uint16.ids    vocabulary has more than 65,535 characters), one per
                                        character, no header

`poetgen train DIR` maps the id files read-only (np.memmap) instead of loading them: pages are
read as training reaches them and count as file-backed, not anonymous, memory, so the memory a
run needs does not grow with the corpus (bench/prepared_memory.py measures it).

The ids are exactly what `corpus.prepare` makes from the same text and settings (held-out lines
chosen by the same hash, vocabulary ranked the same way), and the fingerprint is computed the same
way, so a run started on the text file may be resumed on its prepared form and vice versa.

Why the file names carry the fingerprint: corpus.json is replaced last, atomically, and names the
id files it describes, so an encode interrupted half way leaves the previous corpus intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from poetgen.errors import CorpusError
from poetgen.files import atomic_open
from poetgen.lm.config import TrainConfig
from poetgen.lm.corpus import (NEWLINE, Fingerprinter, LineCounter, TrainingData, Vocab,
                               encode_tensor, held_out, iter_text, lines_with_ends, read_text)

FORMAT = "poetgen-ids-v1"
META = "corpus.json"
UNICODE = 0x110000  # code points


def is_prepared(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


# --------------------------------------------------------------------------------------------
# Writing


@dataclass
class EncodeReport:
    path: Path
    vocab: Vocab
    dtype: str
    text_kind: str  # "lines" or "running", as given or decided
    tokens: dict[str, int]  # side -> ids written
    unknown: dict[str, int]  # side -> ids that are the unknown token
    fingerprint: str  # of the training ids


def encode_corpus(train_paths: list[str | Path], out: str | Path, config: TrainConfig,
                  val_path: str | Path | None = None, vocab: Vocab | None = None,
                  kind: str = "auto",
                  progress: Callable[[int], None] = lambda nbytes: None) -> EncodeReport:
    """Encode `train_paths` (one after another, a newline between files) into the directory `out`.

    `kind` is what the text is ("lines", "running", or "auto": corpus.detect_text_kind on the
    training files). Validation is `val_path`, or else `config.val_fraction` held out as
    `corpus.split_text` holds it out: lines chosen by hash, or the end of running text. The
    vocabulary is `vocab` (a checkpoint's, for fine-tuning), or else built from the training side
    with `config.min_count` and `config.max_vocab`. `progress` receives the bytes of each piece
    read: the training files are read up to three times (to decide the kind and find the end of
    running text, to count characters, to encode), the validation file once.
    """
    train_paths = [Path(p) for p in train_paths]
    val_path = Path(val_path) if val_path else None
    for p in train_paths + ([val_path] if val_path else []):
        if not p.is_file():
            raise CorpusError(f"{p}: file not found; give UTF-8 text files, one poem per line")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out}: exists and is not a directory; choose another -o")

    # -- pass 1 (when needed): what kind of text, and where running text's validation starts ----
    cut = None  # in characters
    if kind == "auto" or (kind == "running" and not val_path):
        lines, chars = LineCounter(ord(NEWLINE)), 0
        for block in _line_blocks(train_paths, progress):
            lines.update(_code_points(block))
            chars += len(block)
        kind = lines.kind() if kind == "auto" else kind
        cut = int(chars * (1 - config.val_fraction))  # as split_text cuts
    split = _Split(train_paths, val_path, kind, cut, config.val_fraction, progress)

    # -- pass 2 (without a given vocabulary): count the training side's characters --------------
    vocab_given = vocab is not None
    vocab = vocab if vocab_given else _count_vocab(split, config)

    # -- pass 3: encode both sides, each to a file named by what it holds -----------------------
    dtype = "<u2" if len(vocab) <= 0xFFFF else "<u4"
    out.mkdir(parents=True, exist_ok=True)
    writers, files = _write_ids(split, vocab, dtype, out)
    meta = {"format": FORMAT, "dtype": np.dtype(dtype).name, "text_kind": kind,
            "vocab": list(vocab.chars),
            "min_count": config.min_count, "max_vocab": config.max_vocab,
            "val_fraction": None if val_path else config.val_fraction,
            "vocab_given": vocab_given,
            "sources": {"train": [str(p) for p in train_paths],
                        "val": str(val_path) if val_path else None},
            **{side: {"file": files[side].name, "tokens": w.tokens, "unknown": w.unknown,
                      "fingerprint": w.fingerprint.hexdigest()} for side, w in writers.items()}}
    with atomic_open(out / META) as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    for stale in out.glob("*.ids"):  # id files of an earlier encode into the same directory
        if stale.name not in (files["train"].name, files["val"].name):
            stale.unlink()
    return EncodeReport(out, vocab, meta["dtype"], kind, {s: w.tokens for s, w in writers.items()},
                        {s: w.unknown for s, w in writers.items()}, meta["train"]["fingerprint"])


@dataclass(frozen=True)
class _Split:
    """How the training files' text divides into the training and validation sides."""

    train_paths: list[Path]
    val_path: Path | None  # a validation file; None: held out of the training files
    kind: str  # "lines": lines held out by hash; "running": the end of the text from `cut` on
    cut: int | None
    val_fraction: float
    progress: Callable[[int], None]

    def sides(self, with_val: bool = True) -> Iterator[tuple[str, str]]:
        """("train" | "val", text) pieces, in order (`with_val=False`: without a val file's)."""
        position = 0
        for block in _line_blocks(self.train_paths, self.progress):
            if self.val_path:
                yield "train", block
            elif self.kind == "running":  # the end of the text
                at = min(len(block), max(0, self.cut - position))
                yield "train", block[:at]
                yield "val", block[at:]
            else:  # lines chosen by hash
                lines = lines_with_ends(block)
                held = [held_out(line, self.val_fraction) for line in lines]
                yield "train", "".join(line for line, h in zip(lines, held) if not h)
                yield "val", "".join(line for line, h in zip(lines, held) if h)
            position += len(block)
        if self.val_path and with_val:
            for block in _line_blocks([self.val_path], self.progress):
                yield "val", block


def _count_vocab(split: _Split, config: TrainConfig) -> Vocab:
    """The vocabulary of the training side, by `config.min_count` and `config.max_vocab`."""
    counts = np.zeros(UNICODE, dtype=np.int64)
    for side, text in split.sides(with_val=False):
        if side == "train" and text:
            counts += np.bincount(_code_points(text), minlength=UNICODE)
    found = np.flatnonzero(counts)
    return Vocab.from_counts({chr(c): int(counts[c]) for c in found}, config.min_count,
                             config.max_vocab)


def _write_ids(split: _Split, vocab: Vocab, dtype: str, out: Path
               ) -> tuple[dict[str, _IdWriter], dict[str, Path]]:
    """Both sides' ids, each written to a temporary file, kept (renamed to the name of what it
    holds: see the module docstring) only if both sides were written whole and are not empty."""
    table = np.full(UNICODE, vocab.unk_id, dtype=np.int64)  # code point -> id
    for i, ch in enumerate(vocab.chars):
        table[ord(ch)] = i
    with ExitStack() as stack:
        writers = {side: _IdWriter(stack.enter_context(atomic_open(out / f"{side}.partial", "wb")),
                                   dtype, vocab.unk_id) for side in ("train", "val")}
        for side, text in split.sides():
            if text:
                writers[side].write(table[_code_points(text)])
        for side, w in writers.items():
            if not w.tokens:
                raise CorpusError(f"no {side} text: " + (
                    "the training files are empty" if side == "train" else
                    "too few lines to hold out a share; give a --val file"))
    files = {}
    for side, w in writers.items():
        files[side] = out / f"{side}-{w.fingerprint.hexdigest()}-{np.dtype(dtype).name}.ids"
        os.replace(out / f"{side}.partial", files[side])
    return writers, files


def _line_blocks(paths: list[Path], progress: Callable[[int], None]) -> Iterator[str]:
    """The files' text in pieces that end at a line end (a file without a final newline gets
    one, so that files do not run into each other)."""
    for index, path in enumerate(paths):
        pending = ""
        for text in iter_text(path):
            progress(len(text.encode("utf-8")))
            text = pending + text
            cut = text.rfind(NEWLINE) + 1
            pending = text[cut:]
            if cut:
                yield text[:cut]
        if pending:
            last = index == len(paths) - 1
            yield pending if last else pending + NEWLINE


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


class _IdWriter:
    """Appends ids to a file, counting them and the unknown ones, and fingerprinting them."""

    def __init__(self, file: IO[bytes], dtype: str, unk_id: int):
        self.file, self.dtype, self.unk_id = file, dtype, unk_id
        self.tokens = self.unknown = 0
        self.fingerprint = Fingerprinter()

    def write(self, ids: np.ndarray) -> None:
        self.file.write(ids.astype(self.dtype).tobytes())
        self.tokens += len(ids)
        self.unknown += int((ids == self.unk_id).sum())
        self.fingerprint.update(ids)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class PreparedCorpus:
    path: Path
    meta: dict
    data: TrainingData  # train_ids and val_ids are read-only memory maps


def open_prepared(path: str | Path) -> PreparedCorpus:
    """Map a prepared corpus (nothing is read but its JSON); checks that the files fit it."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(f"{path}: no {META}; make a prepared corpus with "
                          "`poetgen corpus encode FILE -o DIR`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path / META}: not valid JSON ({e}); encode the corpus again") from None
    if meta.get("format") != FORMAT:
        raise CorpusError(f"{path / META}: format {meta.get('format')!r} is not {FORMAT!r}; "
                          "encode the corpus again with this version of poetgen")
    try:
        vocab = Vocab.from_list(meta["vocab"])
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        arrays = {}
        for side in ("train", "val"):
            file, tokens = path / meta[side]["file"], int(meta[side]["tokens"])
            if not file.is_file() or file.stat().st_size != tokens * dtype.itemsize:
                raise CorpusError(f"{file}: missing, or not the {tokens:,} ids {META} describes; "
                                  "encode the corpus again")
            arrays[side] = np.memmap(file, dtype=dtype, mode="r", shape=(tokens,))
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{path / META}: incomplete or invalid ({e}); encode the corpus again"
                          ) from None
    return PreparedCorpus(path, meta, TrainingData(vocab, arrays["train"], arrays["val"],
                                                   meta.get("text_kind", "lines")))


def load_training_data(corpus: str | Path, val_path: str | Path | None, config: TrainConfig,
                       vocab: Vocab | None = None, kind: str = "auto") -> TrainingData:
    """What `poetgen train CORPUS` trains on: a prepared corpus directory (memory-mapped), or a
    text file (read and encoded in memory, see corpus.prepare).

    With a prepared corpus, `val_path` (if given) replaces its validation side, `vocab` (a
    resumed or --init run's) must be the one it was encoded with, and `kind`, unless "auto",
    overrides the text kind decided when it was encoded (its validation split stays as made).
    """
    from poetgen.lm.corpus import prepare

    if not is_prepared(corpus):
        return prepare(corpus, val_path, config, vocab, kind)
    prepared = open_prepared(corpus)
    data = prepared.data
    if vocab is not None and vocab.chars != data.vocab.chars:
        raise CorpusError(f"{corpus}: was encoded with another vocabulary than the checkpoint's; "
                          "encode it again with `poetgen corpus encode … --vocab-from CHECKPOINT`")
    if val_path:
        data.val_ids = encode_tensor(data.vocab, read_text(val_path))
    if kind != "auto":
        data.text_kind = kind
    return data

"""Bits per character of a model on a text, read the way the model learned its text.

A model records what kind of text it learned (ModelConfig.text_kind, decided from the corpus when
training starts), and that decides how a text is scored:

- "lines", one document per line (poems): every line and its newline is scored on its own, from
  the poem-start state, which is how the model is used to write a poem. Lines are independent, so
  many are scored in one batch: lines of about the same length are grouped (a Tang file has four
  lengths, so almost no padding) and each group is one forward pass of shape (length, lines).
  This is many times faster on a CPU than reading one stream at batch 1, and the figure is the
  stream figure to within ~0.001 bpc for a model whose start state was burned in
  (README "Poem starts"): the state a stream carries into a new poem is nearly the start state.
- "running", running text (prose, plays): one stream with the state carried from line to line,
  as in training, since a line is not a document there.

Both read the text in pieces, so a file of any size is scored in bounded memory, and both score
every character of the text exactly once (the first from the start state's output).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from poetgen.lm.corpus import Vocab, iter_text
from poetgen.lm.model import CharLSTM, evaluating

PIECE = 2048  # characters per forward pass along time (a longer line is read in pieces)
BATCH_CHARS = 8192  # characters (lines x longest line) per batch in "lines" mode
POOL_CHARS = 1 << 20  # characters of lines read ahead and sorted by length in "lines" mode
LN2 = math.log(2)  # nats per bit: bits = nats / LN2


@dataclass
class EvalResult:
    nats: float  # total negative log-likelihood
    chars: int  # characters scored (every character of the text, including newlines)
    unknown: int  # characters outside the vocabulary (scored as the unknown token)

    @property
    def bpc(self) -> float:
        return self.nats / max(1, self.chars) / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats / max(1, self.chars))


def reading(model: CharLSTM) -> str:
    """How `model` reads a text: "running" (one stream) or "lines" (each line alone).

    A model never trained has text_kind "auto"; it is read by lines, the documented corpus format.
    """
    return "running" if model.config.text_kind == "running" else "lines"


# ----------------------------------------------------------------------------------------------
# Running text: one stream


def _stream_nll(model: CharLSTM, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Nats of every token of 1-D id tensors read as one continuous stream from the poem-start
    state, in text order. The first character is predicted by the start state's output, the rest
    by the character before them."""
    state = model.start_state(1)
    prev = model.start_output(1)[None]  # (1, 1, P): output after the poem-start newline
    device = model.start_h.device
    for ids in pieces:
        for start in range(0, ids.numel(), PIECE):
            x = ids[start : start + PIECE].to(device).view(-1, 1)  # (T, 1)
            outputs, state = model(x, state)  # outputs[t] predicts x[t + 1]
            yield model.token_nll(torch.cat([prev, outputs[:-1]]), x).view(-1).cpu()
            prev = outputs[-1:]


# ----------------------------------------------------------------------------------------------
# One document per line: every line alone from the start state, many lines per batch


def split_lines_ids(pieces: Iterable[torch.Tensor], newline: int | None) -> Iterator[torch.Tensor]:
    """The lines of a stream of 1-D id tensors, each with its newline (the last may have none)."""
    pending: list[torch.Tensor] = []
    for ids in pieces:
        start = 0
        if newline is not None:
            for end in (ids == newline).nonzero().view(-1).tolist():
                pending.append(ids[start : end + 1])
                yield pending[0] if len(pending) == 1 else torch.cat(pending)
                pending, start = [], end + 1
        if start < ids.numel():
            pending.append(ids[start:])
    if pending:
        yield torch.cat(pending)


def _batch_nll(model: CharLSTM, lines: list[torch.Tensor]) -> list[torch.Tensor]:
    """Nats of every token of each line, all lines read from the start state in one batch."""
    device = model.start_h.device
    lengths = [line.numel() for line in lines]
    T, B = max(lengths), len(lines)
    ids = torch.zeros(T, B, dtype=torch.long)  # padding after a line's end is read but not scored
    for j, line in enumerate(lines):
        ids[: lengths[j], j] = line
    ids = ids.to(device)
    state = model.start_state(B)
    prev = model.start_output(B)[None]  # (1, B, P)
    nll = []
    for start in range(0, T, PIECE):
        x = ids[start : start + PIECE]
        outputs, state = model(x, state)
        nll.append(model.token_nll(torch.cat([prev, outputs[:-1]]), x))
        prev = outputs[-1:]
    nll = torch.cat(nll).cpu()  # (T, B)
    return [nll[: lengths[j], j] for j in range(B)]


def _pool_nll(model: CharLSTM, pool: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Nats of the tokens of `pool`'s lines, in the pool's order, scored in length-sorted batches
    of up to BATCH_CHARS characters."""
    order = sorted(range(len(pool)), key=lambda i: pool[i].numel())
    scored: list[torch.Tensor | None] = [None] * len(pool)
    group: list[int] = []
    for i in order:  # ascending length: the newest line is the longest of its group
        if group and (len(group) + 1) * pool[i].numel() > BATCH_CHARS:
            for k, nll in zip(group, _batch_nll(model, [pool[k] for k in group])):
                scored[k] = nll
            group = []
        group.append(i)
    if group:
        for k, nll in zip(group, _batch_nll(model, [pool[k] for k in group])):
            scored[k] = nll
    yield from scored


@torch.no_grad()
def line_nats(model: CharLSTM, lines: list[torch.Tensor]) -> list[torch.Tensor]:
    """Nats of every token of each line (1-D ids), each read alone from the start state as the
    "lines" reading reads a line, in the order given: one (len,) tensor per line."""
    with evaluating(model):
        return list(_pool_nll(model, lines))


def _lines_nll(model: CharLSTM, pieces: Iterable[torch.Tensor],
               newline: int | None) -> Iterator[torch.Tensor]:
    """Nats of every token, each line scored alone from the start state, in text order."""
    pool, size = [], 0
    for line in split_lines_ids(pieces, newline):
        pool.append(line)
        size += line.numel()
        if size >= POOL_CHARS:
            yield from _pool_nll(model, pool)
            pool, size = [], 0
    yield from _pool_nll(model, pool)


# ----------------------------------------------------------------------------------------------


def _token_nll(model: CharLSTM, vocab: Vocab, pieces: Iterable[torch.Tensor],
               kind: str | None) -> Iterator[torch.Tensor]:
    kind = kind or reading(model)
    if kind not in ("lines", "running"):
        raise ValueError(f"kind must be 'lines' or 'running', got {kind!r}")
    if kind == "running":
        return _stream_nll(model, pieces)
    return _lines_nll(model, pieces, vocab.newline_id)


@torch.no_grad()
def evaluate_ids(model: CharLSTM, vocab: Vocab, pieces: Iterable[torch.Tensor],
                 progress: Callable[[int], None] = lambda chars: None,
                 kind: str | None = None) -> EvalResult:
    """Score 1-D id tensors (one text cut anywhere) as the model reads text (see `reading`), or
    as `kind` ("lines" or "running") says."""
    nats, chars = 0.0, 0
    with evaluating(model):
        for nll in _token_nll(model, vocab, pieces, kind):
            nats += float(nll.sum(dtype=torch.float64))
            chars += nll.numel()
            progress(nll.numel())
    return EvalResult(nats, chars, 0)


@torch.no_grad()
def token_bits(model: CharLSTM, vocab: Vocab, ids: torch.Tensor,
               kind: str | None = None) -> torch.Tensor:
    """Bits of every token of the 1-D `ids`, read as evaluate_ids reads them: (N,)."""
    with evaluating(model):
        nats = list(_token_nll(model, vocab, [ids], kind))
    return (torch.cat(nats) if nats else torch.zeros(0)) / LN2


def evaluate_file(model: CharLSTM, vocab: Vocab, path,
                  progress: Callable[[int], None] = lambda chars: None,
                  kind: str | None = None) -> EvalResult:
    """Score a UTF-8 file (see corpus.iter_text for the reading rules) with evaluate_ids."""
    unknown = 0

    def pieces():
        nonlocal unknown
        for text in iter_text(path):
            ids = vocab.encode(text)
            unknown += sum(1 for i in ids if i == vocab.unk_id)
            yield torch.tensor(ids, dtype=torch.long)

    result = evaluate_ids(model, vocab, pieces(), progress, kind)
    result.unknown = unknown
    return result

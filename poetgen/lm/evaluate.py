"""Bits per character of a model on a text, read as one stream with the state carried across lines.

That is how the model reads text in training, so the figure is comparable with the training
curve. The text is consumed in pieces, so a file of any size is scored in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from poetgen.lm.corpus import Vocab, iter_text
from poetgen.lm.model import CharLSTM, evaluating

PIECE = 2048  # characters scored per forward pass
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


def _stream(model: CharLSTM, pieces: Iterable[torch.Tensor]
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(predictors (T, 1, P), targets (T, 1)) over 1-D id tensors read as one continuous stream
    from the poem-start state. The first character is predicted by the start state's output, the
    rest by the character before them, so every character is scored exactly once."""
    state = model.start_state(1)
    prev = state[0][-1:]  # (1, 1, P): output after the poem-start newline
    device = model.start_h.device
    for ids in pieces:
        for start in range(0, ids.numel(), PIECE):
            x = ids[start : start + PIECE].to(device).view(-1, 1)  # (T, 1)
            outputs, state = model(x, state)  # outputs[t] predicts x[t + 1]
            yield torch.cat([prev, outputs[:-1]]), x  # (T, 1, P) predicts x
            prev = outputs[-1:]


@torch.no_grad()
def evaluate_ids(model: CharLSTM, pieces: Iterable[torch.Tensor],
                 progress: Callable[[int], None] = lambda chars: None) -> EvalResult:
    """Score 1-D id tensors as one continuous stream, starting from the poem-start state."""
    nats, chars = 0.0, 0
    with evaluating(model):
        for predictors, x in _stream(model, pieces):
            nats += float(model.loss(predictors, x)) * x.size(0)
            chars += x.size(0)
            progress(x.size(0))
    return EvalResult(nats, chars, 0)


@torch.no_grad()
def token_bits(model: CharLSTM, ids: torch.Tensor) -> torch.Tensor:
    """Bits of every token of the 1-D `ids`, read as evaluate_ids reads them: (N,)."""
    with evaluating(model):
        nats = [-model.log_probs(predictors).view(x.size(0), -1).gather(1, x).view(-1)
                for predictors, x in _stream(model, [ids])]
    return torch.cat(nats) / LN2


def evaluate_file(model: CharLSTM, vocab: Vocab, path,
                  progress: Callable[[int], None] = lambda chars: None) -> EvalResult:
    """Stream a UTF-8 file through the model (see corpus.iter_text for the reading rules)."""
    unknown = 0

    def pieces():
        nonlocal unknown
        for text in iter_text(path):
            ids = vocab.encode(text)
            unknown += sum(1 for i in ids if i == vocab.unk_id)
            yield torch.tensor(ids, dtype=torch.long)

    result = evaluate_ids(model, pieces(), progress)
    result.unknown = unknown
    return result

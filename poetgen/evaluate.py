"""Bits per character of a model on a text, read as one stream with the state carried across lines.

That is how the model reads text in training, so the figure is comparable with the training
curve. The text is consumed in pieces, so a file of any size is scored in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from poetgen.corpus import Vocab, iter_text
from poetgen.model import CharLSTM

PIECE = 2048  # characters scored per forward pass


@dataclass
class EvalResult:
    nats: float  # total negative log-likelihood
    chars: int  # characters scored (every character of the text, including newlines)
    unknown: int  # characters outside the vocabulary (scored as the unknown token)

    @property
    def bpc(self) -> float:
        return self.nats / max(1, self.chars) / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats / max(1, self.chars))


@torch.no_grad()
def evaluate_ids(model: CharLSTM, pieces: Iterable[torch.Tensor],
                 progress: Callable[[int], None] = lambda chars: None) -> EvalResult:
    """Score 1-D id tensors as one continuous stream, starting from the poem-start state.

    The first character is predicted by the start state's output, the rest by the character
    before them, so every character is scored exactly once.
    """
    was_training = model.training
    model.eval()
    state = model.start_state(1)
    prev = state[0][-1:]  # (1, 1, P): output after the poem-start newline
    nats, chars = 0.0, 0
    device = model.start_h.device
    for ids in pieces:
        for start in range(0, ids.numel(), PIECE):
            x = ids[start : start + PIECE].to(device).view(-1, 1)  # (T, 1)
            outputs, state = model(x, state)  # outputs[t] predicts x[t + 1]
            predictors = torch.cat([prev, outputs[:-1]])  # (T, 1, P) predicts x
            nats += float(model.loss(predictors, x)) * x.size(0)
            chars += x.size(0)
            prev = outputs[-1:]
            progress(x.size(0))
    model.train(was_training)
    return EvalResult(nats, chars, 0)


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

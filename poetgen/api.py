"""The Python API: load a model, write poems or text, score text, check poems.

    import poetgen

    poet = poetgen.load("default")                      # the bundled Tang model, or a path
    for poem in poet.write(form="七绝", n=3, seed=7):    # any GenerationSettings field
        print(poem.text, poem.template, poem.rhyme_group)
    poet.score("床前明月光，疑是地上霜。举头望明月，低头思故乡。")   # bits per character
    poetgen.check("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。").ok

Everything goes through the same core as the command line (`write`, `GenerationSettings`,
`check_poem`), so the same settings give the same poems, and errors are the same
`PoetgenError`s, with messages that name settings as Python spells them (`temperature`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from poetgen.errors import ConfigError
from poetgen.lm import checkpoint as ckpt_mod
from poetgen.lm.config import INFERENCE_PRECISIONS as PRECISIONS
from poetgen.lm.corpus import Vocab
from poetgen.lm.evaluate import evaluate_ids
from poetgen.lm.model import CharLSTM
from poetgen.lm.sample import Sample
from poetgen.settings import GenerationSettings
from poetgen.verse.constrain import Poem
from poetgen.write import write


@dataclass
class Poet:
    """A loaded model: writes text and poems, and scores text."""

    model: CharLSTM
    vocab: Vocab
    path: Path  # the checkpoint file it was loaded from
    meta: dict  # the checkpoint's header: config, training history, provenance
    notes: tuple[str, ...] = ()  # what a user should know about the file, e.g. an old format

    def write(self, settings: GenerationSettings | None = None, /, **changes) -> list[Sample | Poem]:
        """`n` texts, or poems when `form` is given, e.g. `write(form="五律", acrostic="春江花月")`.

        `settings` is a GenerationSettings to start from; keyword arguments change its fields
        (see `GenerationSettings` for every field, its default and meaning). Poems are `Poem`s
        (text, mean_logprob, seed, form, template, rhyme_group); free texts are `Sample`s.
        """
        if settings is not None and not isinstance(settings, GenerationSettings):
            raise ConfigError(f"write's first argument is a GenerationSettings, not "
                              f"{type(settings).__name__}; give settings as keyword arguments, "
                              "e.g. write(form=\"五绝\")")
        base = settings or GenerationSettings()
        unknown = sorted(set(changes) - set(GenerationSettings.options()))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(GenerationSettings.options())}")
        # Text reads as on the command line ("off", "0.5"); other values must have the type.
        changes = {k: GenerationSettings.from_python(k, v) for k, v in changes.items()}
        from poetgen.verse.lexicon import lexicon_for

        # Corpus statistics for themes and ranking: the run directory's own, else the bundled ones.
        return write(self.model, self.vocab, base.replace(**changes), side="api",
                     lexicon=lexicon_for(self.path))

    @torch.no_grad()
    def score(self, text: str) -> float:
        """Bits per character of `text` under the model, read from the poem-start state as
        `poetgen eval` reads a file (each line alone for a model of one poem per line). Only the
        characters given count: a file's lines end in a newline, which eval scores too (the
        model's "the poem is over"), so `score(poem + "\n")` is eval's figure for that line.

        Characters the model never saw score as its unknown token; `vocab.unknown(text)` lists them.
        """
        if not isinstance(text, str) or not text:
            raise ConfigError(f"score needs some text (a str), not {text!r}")
        ids = torch.tensor(self.vocab.encode(text), dtype=torch.long)
        return evaluate_ids(self.model, self.vocab, [ids]).bpc


def load(checkpoint: str | Path | None = "default", device: str = "cpu",
         precision: str = "auto") -> Poet:
    """A model from a checkpoint file, a run directory, or "default" (the bundled Tang model).

    None means what the CLI does without --checkpoint: $POETGEN_CHECKPOINT, else the newest
    checkpoint under ./checkpoints, else the bundled model. `precision` is the CLI's --precision
    (config.INFERENCE_PRECISION_HELP: "auto", "fp32", "bf16", "int8" or "w8a8").
    """
    from poetgen.lm.train import pick_device

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    ck = ckpt_mod.load_checkpoint(ckpt_mod.resolve(None if checkpoint is None else str(checkpoint)),
                                  device=pick_device(device, "device"))
    ck.model.inference_precision = precision
    return Poet(ck.model, ck.vocab, ck.path, ck.meta, ck.notes)


__all__ = ["Poet", "load"]

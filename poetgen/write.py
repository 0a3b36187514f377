"""The one entry point that writes: free text or constrained poems, from a model and settings.

    settings ──validate──▶ free text?  ──▶ lm.sample.generate          (temperature, top-k/p)
                           a --form?   ──▶ verse.constrain.generate_poems (masks, best-of, beam)

`sample`, the REPL, `eval --generate`, the Python API and bench/ all call `write`, so "check the
prime, free or constrained, read --novel, best-of or beam" is decided here and nowhere else.
This layer joins the language model (`poetgen.lm`) with verse (`poetgen.verse`); neither of
those imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

from poetgen.errors import ConfigError
from poetgen.lm.corpus import Vocab, read_text
from poetgen.lm.model import CharLSTM
from poetgen.lm.sample import Sample, generate
from poetgen.settings import GenerationSettings, Side
from poetgen.verse.constrain import Poem, compile_spec, generate_poems
from poetgen.verse.check import detect_form
from poetgen.verse.metrics import CopyIndex, PoemMetrics, mean_logprobs, poem_metrics, verse_lines
from poetgen.verse.prosody import get_form, split_verse


def write(model: CharLSTM, vocab: Vocab, settings: GenerationSettings, *, prime: str | None = None,
          novel_lines: set[str] | None = None, side: Side = "api") -> list[Sample | Poem]:
    """`settings.n` texts (free) or poems (with `settings.form`), in one batch.

    prime: the opening to continue (default `settings.prime`). novel_lines: verse lines a poem must
    not copy (default: read from `settings.novel`). side: whose names error messages use.
    """
    settings.validate(side)
    prime = settings.prime if prime is None else prime
    unknown = vocab.unknown(prime)
    if unknown:
        what = {"cli": "--prime", "repl": "the start"}.get(side, "prime")
        raise ConfigError(f"{what} has characters the model never saw: "
                          f"{' '.join(repr(c) for c in unknown)}; remove or replace them")
    spec = settings.poem_spec(prime)
    if spec is None:
        return generate(model, vocab, n=settings.n, max_chars=settings.max_chars,
                        temperature=settings.temperature, top_k=settings.top_k,
                        top_p=settings.top_p, prime=prime, seed=settings.seed,
                        stop_at_newline=settings.mode == "poem" and not settings.no_stop)
    if novel_lines is None and settings.novel:
        novel_lines = _verse_lines(Path(settings.novel))
    compiled = compile_spec(spec, vocab)
    return generate_poems(model, compiled, n=settings.n, temperature=settings.temperature,
                          top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed,
                          best_of=settings.best_of, beam=settings.beam, novel_lines=novel_lines)


def compare_generated(model: CharLSTM, vocab: Vocab, forms: list[str], n: int,
                      settings: GenerationSettings, *, copy_corpus=None, real_file=None,
                      progress: Callable[[Iterable], Iterable] = lambda forms: forms,
                      ) -> list[PoemMetrics]:
    """Metrics of `n` poems per form written with `settings`, each beside `real_file`'s poems.

    `copy_corpus` measures copying against a training corpus; `settings.novel` forbids its verse
    lines in generation (when it is the same file as `copy_corpus`, that file is read once).
    """
    copy_index = CopyIndex(copy_corpus) if copy_corpus else None
    novel_lines = None
    if settings.novel and copy_index and Path(settings.novel).resolve() == Path(copy_corpus).resolve():
        novel_lines = copy_index.lines
    real = read_text(real_file).splitlines() if real_file else []
    rows = []
    for name in progress(forms):
        form = get_form(name)
        poems = write(model, vocab, settings.replace(form=form.name, n=n), novel_lines=novel_lines)
        rows.append(poem_metrics([p.text for p in poems], form.name, "model", copy_index,
                                 [p.mean_logprob for p in poems]))
        if real:
            mine = [p for p in real if detect_form(split_verse(p)) == form][:n]
            known = [p for p in mine if not vocab.unknown(p)]
            rows.append(poem_metrics(mine, form.name, Path(real_file).name, copy_index,
                                     mean_logprobs(model, vocab, known)))
    return rows


@lru_cache(maxsize=4)
def _verse_lines(path: Path) -> frozenset[str]:
    return frozenset(verse_lines(path))


__all__ = ["write", "compare_generated"]

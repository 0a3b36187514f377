"""The one entry point that writes: free text or constrained poems, from a model and settings.

    settings ──validate──▶ free text?  ──▶ lm.sample.generate          (temperature, top-k/p)
                           a --form?   ──▶ a plan? (verse.plan: --theme, --keywords → fixed words)
                                       ──▶ verse.constrain.generate_poems (masks, repetition
                                           penalty, best-of ranked by verse.scores, beam)

`sample`, the REPL, `eval --generate`, the Python API and bench/ all call `write`, so "check the
prime, free or constrained, read --novel, best-of or beam" is decided here and nowhere else.
This layer joins the language model (`poetgen.lm`) with verse (`poetgen.verse`); neither of
those imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

from poetgen.errors import ConfigError, CorpusError, PoetgenError
from poetgen.lm.corpus import NEWLINE, Vocab, iter_text, read_text
from poetgen.lm.model import CharLSTM
from poetgen.lm.sample import Sample, generate, new_seed
from poetgen.settings import SEED_LIMIT, GenerationSettings, Side
from poetgen.verse.constrain import Poem, Rank, compile_spec, generate_poems, with_plans
from poetgen.verse.lexicon import Lexicon, bundled
from poetgen.verse.metrics import CopyIndex, PoemMetrics, mean_logprobs, poem_metrics, verse_lines
from poetgen.verse.plan import make_plan
from poetgen.verse.prosody import detect_form, get_form, split_verse
from poetgen.verse.scores import poem_scores


def write(model: CharLSTM, vocab: Vocab, settings: GenerationSettings, *, prime: str | None = None,
          novel_lines: set[str] | None = None, side: Side = "api",
          lexicon: Lexicon | None = None) -> list[Sample | Poem]:
    """`settings.n` texts (free) or poems (with `settings.form`), in one batch.

    prime: the opening to continue (default `settings.prime`). novel_lines: verse lines a poem must
    not copy (default: read from `settings.novel`). side: whose names error messages use.
    lexicon: the corpus statistics for themes and ranking (default: the bundled Tang ones).
    With a theme or keywords every candidate has a plan of its own (Poem.plan: the chosen one's).
    """
    settings.validate(side)
    if prime is None:
        prime = read_prime_file(settings.prime_file, side) if settings.prime_file else settings.prime
    unknown = vocab.unknown(prime)
    if unknown:
        what = {"cli": "--prime", "repl": "the start"}.get(side, "prime")
        raise ConfigError(f"{what} has characters the model never saw: "
                          f"{' '.join(repr(c) for c in unknown)}; remove or replace them")
    if not settings.writes_poem:
        # A model of running text has no "end of a poem": its newlines are line breaks, and the
        # first thing it writes at a paragraph start is often one (tinyshakespeare separates
        # speeches with blank lines), so stopping there printed nothing at all.
        running = model.config.text_kind == "running"
        samples = generate(model, vocab, n=settings.n, max_chars=settings.max_chars,
                           temperature=settings.temperature, top_k=settings.top_k,
                           top_p=settings.top_p, prime=prime, seed=settings.seed,
                           stop_at_newline=(settings.mode == "poem" and not settings.no_stop
                                            and not running))
        if running and not prime:  # blank lines before the first word are not worth printing
            for s in samples:
                s.text = s.text.lstrip(NEWLINE)
        return samples
    if novel_lines is None and settings.novel:
        novel_lines = _verse_lines(Path(settings.novel))
    lexicon = lexicon or bundled()
    seed = new_seed() if settings.seed is None else settings.seed
    try:
        compiled = compile_spec(settings.poem_spec(prime), vocab)
        search = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                      best_of=settings.best_of, beam=settings.beam, novel_lines=novel_lines,
                      repeat_penalty=settings.repeat_penalty, doubles=lexicon.doubles,
                      line_keep=settings.line_keep, rank=ranker(settings, lexicon))
        if settings.theme or settings.keywords:
            # Every candidate of every poem has a plan of its own (drawn from seed, seed + 1, ...),
            # so the ranking also chooses among keywords and where they stand.
            plans = [make_plan(settings.theme, settings.keywords, compiled, lexicon,
                               (seed + k) % (SEED_LIMIT + 1))
                     for k in range(settings.n * max(1, settings.best_of))]
            compiled = with_plans(compiled, [p.fixed() for p in plans], [p.to_dict() for p in plans])
        poems = generate_poems(model, compiled, n=settings.n, seed=seed, **search)
    except PoetgenError as e:  # the decoder names settings as flags; say them as `side` does
        raise type(e)(GenerationSettings.named_for(str(e), side)) from None
    for poem in poems:
        poem.scores = poem_scores(poem.text, lexicon, settings.theme)
    return poems


def ranker(settings: GenerationSettings, lexicon: Lexicon) -> Rank:
    """How candidates are ranked: log-probability per character less the repetition penalties
    taken, plus the weighted coherence (and affinity to a --theme) and (律诗) parallelism of
    verse.scores."""
    def rank(poems: list[Poem]) -> list[float]:
        out = []
        for p in poems:
            scores = poem_scores(p.text, lexicon, settings.theme) \
                if settings.coherence or settings.parallelism else {}
            out.append(p.penalized_logprob
                       + settings.coherence * (scores.get("coherence", 0.0) + scores.get("theme", 0.0))
                       + settings.parallelism * scores.get("parallelism", 0.0))
        return out
    return rank


def session_defaults(model: CharLSTM, vocab: Vocab) -> dict:
    """The settings an interactive session starts from, by what the model learned: a model of
    Chinese verse starts on a 七绝, a model of running text on free text (`mode free`: what is
    typed is continued for `max_chars`), any other model of lines writes a line at a time."""
    if model.config.text_kind == "running":
        return {"mode": "free"}
    if all(mark in vocab for mark in "，。"):
        return {"form": "七绝"}
    return {}


def compare_generated(model: CharLSTM, vocab: Vocab, forms: list[str], n: int,
                      settings: GenerationSettings, *, copy_corpus=None, real_file=None,
                      progress: Callable[[Iterable], Iterable] = lambda forms: forms,
                      lexicon: Lexicon | None = None) -> list[PoemMetrics]:
    """Metrics of `n` poems per form written with `settings`, each beside `real_file`'s poems.

    `copy_corpus` measures copying against a training corpus; `settings.novel` forbids its verse
    lines in generation (when it is the same file as `copy_corpus`, that file is read once).
    """
    lexicon = lexicon or bundled()
    copy_index = CopyIndex(copy_corpus) if copy_corpus else None
    novel_lines = None
    if settings.novel and copy_index and Path(settings.novel).resolve() == Path(copy_corpus).resolve():
        novel_lines = copy_index.lines
    real = read_text(real_file).splitlines() if real_file else []
    rows = []
    for name in progress(forms):
        form = get_form(name)
        poems = write(model, vocab, settings.replace(form=form.name, n=n), novel_lines=novel_lines,
                      lexicon=lexicon)
        rows.append(poem_metrics([p.text for p in poems], form.name, "model", copy_index,
                                 [p.mean_logprob for p in poems], lexicon))
        if real:
            mine = [p for p in real if detect_form(split_verse(p)) == form][:n]
            known = [p for p in mine if not vocab.unknown(p)]
            rows.append(poem_metrics(mine, form.name, Path(real_file).name, copy_index,
                                     mean_logprobs(model, vocab, known), lexicon))
    return rows


def read_prime_file(path: Path, side: Side = "cli") -> str:
    """The start a --prime-file gives: its text, without the one newline that ends most files
    (an editor adds it; for a poem model it would mean "the poem is over")."""
    try:
        text = "".join(iter_text(path))
    except CorpusError as e:
        raise ConfigError(f"{GenerationSettings.public('prime_file', side)} {e}") from None
    return text.removesuffix(NEWLINE)


@lru_cache(maxsize=4)
def _verse_lines(path: Path) -> frozenset[str]:
    return frozenset(verse_lines(path))


__all__ = ["write", "compare_generated", "ranker", "session_defaults", "read_prime_file"]

"""Generation settings: every knob of writing text or poems, declared once.

Each field of `GenerationSettings` carries its default, a comment, and an `Option`: its public name
(`--temp` on the command line, `:temp` in the REPL), its help, how text becomes a value and what
a valid value is. The CLI's options, the REPL's commands and their help, and every validation
message are generated from this table, so a setting cannot drift between front ends:

    field         CLI           REPL          parse + check (one function each)
    temperature   --temp 0.7    :temp 0.7     _positive: a number > 0
    n             --n 500       :n 3          whole number 1..10,000 (CLI), 1..100 (REPL)
    novel         --novel FILE  -             CLI only
    mode          -             :mode free    REPL only

A message names the setting as its front end spells it: `--temp needs a number > 0, not 'abc'`
on the command line, `:temp needs a number > 0, not 'abc'` in the REPL, and
`temperature needs ...` from Python.

This module imports neither torch nor the model (prosody, for the values the poem settings take,
reads no data at import; lm.config, for the seed bound, imports nothing heavy), so the CLI can
build its options cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from poetgen.errors import ConfigError, PoetgenError
from poetgen.lm.config import SEED_LIMIT  # one bound for sampling's seeds and training's
from poetgen.verse.prosody import READINGS, RHYME_SCHEMES, TONE_MODES, one_of

Side = Literal["cli", "repl", "api"]
OFF_WORDS = ("off", "none")
# Free text is sampled n rows at once into (max_chars, n) buffers of 16 bytes a character: n x
# max_chars is held to 10 million characters (160 MB), ten novels in one command.
FREE_TEXT_CHARS = 10_000_000


@dataclass(frozen=True)
class Option:
    """How one setting is named, parsed and checked on each front end."""

    name: str  # public name: --NAME on the command line, :NAME in the REPL
    help: str
    parse: Callable[[str], Any]  # text -> value; raises ValueError with what a valid value is
    expects: str  # what a valid value looks like, for messages and help: "a number > 0"
    sides: tuple[str, ...] = ("cli", "repl")  # the front ends that offer it
    choices: tuple[str, ...] = ()  # values to complete and list in help
    metavar: str = ""
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # side -> (low, high)
    poem_only: bool = False  # needs a --form (a constraint of the poem)
    flag: bool = False  # a boolean: `--no-repeat` on the command line, `:no-repeat on|off`
    aliases: tuple[str, ...] = ()  # older REPL spellings that still work (:group, :max)

    def public(self, side: Side) -> str:
        return {"cli": f"--{self.name}", "repl": f":{self.name}"}.get(side, self.name)


def _positive(text: str) -> float:
    v = float(text)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError
    return v


def _probability(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise ValueError
    return v


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = int(text)
        if v < low or (high is not None and v > high):
            raise ValueError
        return v
    return parse


def _seed(text: str) -> int | None:
    if text.strip().lower() in OFF_WORDS + ("random",):
        return None
    return _whole(0, SEED_LIMIT)(text)


def _choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in values:
            raise ValueError
        return text
    return parse


def _form(text: str) -> str | None:
    if text.strip().lower() in OFF_WORDS:
        return None
    from poetgen.verse.prosody import get_form

    try:
        return get_form(text).name
    except PoetgenError:
        raise ValueError from None


def _text_or_off(text: str) -> str:
    return "" if text.strip().lower() in OFF_WORDS else text.strip()


def _group(text: str) -> str | None:
    return None if text.strip().lower() in OFF_WORDS else text.strip()


def _han_heads(text: str) -> str:
    """An acrostic: Chinese characters only (spaces and ，。,/ between them are allowed)."""
    from poetgen.verse.prosody import is_han

    text = _text_or_off(text)
    if any(not is_han(c) and c not in " ，。,./、" for c in text):
        raise ValueError
    return text


def _keywords(text: str) -> str:
    """Keywords: characters or two-character words, separated by commas or spaces."""
    from poetgen.verse.prosody import split_keywords

    text = _text_or_off(text)
    split_keywords(text)  # ValueError if a keyword is not one or two Chinese characters
    return text


def _weight(text: str) -> float:
    v = float(text)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError
    return v


def _on_off(text: str) -> bool:
    word = text.strip().lower()
    if word in ("on", "yes", "true", "1"):
        return True
    if word in ("off", "no", "false", "0"):
        return False
    raise ValueError


def _path(text: str) -> Path | None:
    return None if text.strip().lower() in OFF_WORDS else Path(text).expanduser()


@functools.cache
def _field_kinds(cls: type) -> dict[str, type]:
    """Each field's type, its annotation less `| None`: read once (get_type_hints evaluates
    every annotation, ~0.2 ms, and validate() asks for each field on every write)."""
    kinds = {}
    for name, annotation in typing.get_type_hints(cls).items():
        kinds[name] = next(k for k in typing.get_args(annotation) or (annotation,)
                           if k is not type(None))
    return kinds


def setting(default: Any, option: Option) -> Any:
    return field(default=default, metadata={"option": option})


@dataclass
class GenerationSettings:
    """What to write and how: sampling, the poem's constraints, the search over candidates."""

    # -- sampling ---------------------------------------------------------------------------
    temperature: float = setting(0.8, Option(
        "temp", "Sampling temperature: lower is safer, higher is wilder.", _positive,
        "a number > 0, e.g. 0.8"))  # with --line-keep, poems likelier than 0.7 without, more varied
    top_k: int = setting(0, Option(
        "top-k", "Sample only from the k likeliest characters (0 = off).", _whole(0),
        "a whole number >= 0 (0 = off)"))
    top_p: float = setting(1.0, Option(
        "top-p", "Sample from the smallest set of characters holding this much probability.",
        _probability, "a number in (0, 1]"))
    n: int = setting(1, Option(
        "n", "Number of texts or poems (written together, in batches of up to 2,048 poem "
        "candidates).", _whole(1),
        "a whole number from {low} to {high}", limits={"cli": (1, 10_000), "repl": (1, 100)}))
    seed: int | None = setting(None, Option(
        "seed", "Random seed; the same seed gives the same text. [default: random]", _seed,
        "a whole number >= 0, or off", metavar="INTEGER"))
    prime: str = setting("", Option(
        "prime", "Text the poem starts with; the model continues it.", str, "text",
        sides=("cli",)))  # the REPL's prime is the line typed at its prompt
    prime_file: Path | None = setting(None, Option(
        "prime-file", "Start from the text of this file (UTF-8; newlines kept, but not the one "
        "that ends the file), for primes a command line cannot hold.", _path, "a UTF-8 text file",
        sides=("cli",), metavar="FILE"))
    # -- free text --------------------------------------------------------------------------
    max_chars: int = setting(200, Option(
        "max-chars", "Stop free text after this many characters if it has not ended.", _whole(1),
        "a whole number from {low} to {high}", aliases=("max",),
        limits={"cli": (1, FREE_TEXT_CHARS)}))
    no_stop: bool = setting(False, Option(
        "no-stop", "Free text runs on past the end of a poem (newline). A model of running text "
        "(prose) always does.", _on_off, "on or off", sides=("cli",), flag=True))
    mode: str = setting("poem", Option(
        "mode", "poem: a poem of the :form (or text up to the end of a poem); free: free text "
        "of :max-chars characters.", _choice("poem", "free"), "poem or free", sides=("repl",),
        choices=("poem", "free")))
    # -- the poem's form and constraints ------------------------------------------------------
    form: str | None = setting(None, Option(
        "form", "Write a Tang poem of this form: 五绝, 五律, 七绝 or 七律 (or 5x4 5x8 7x4 7x8); "
        "form, rhyme and tones are then guaranteed.", _form,
        "五绝, 五律, 七绝, 七律 (or 5x4 5x8 7x4 7x8), or off",
        choices=("五绝", "五律", "七绝", "七律"), metavar="FORM"))  # 五绝|… misaligns click's help
    rhyme: str = setting("pingshui", Option(
        "rhyme", "Rhyme scheme: 平水韵 (pingshui), 中华新韵 (modern), or none (off).",
        _choice(*RHYME_SCHEMES, "off"), one_of((*RHYME_SCHEMES, "off")),
        choices=(*RHYME_SCHEMES, "off"), poem_only=True))
    rhyme_group: str | None = setting(None, Option(
        "rhyme-group", "Rhyme in this group (e.g. 下平十一尤, 十唐) or in the group of this "
        "character. [default: chosen by the first rhyme]", _group,
        "a rhyme group or a character, or off", metavar="GROUP", poem_only=True,
        aliases=("group",)))
    tones: str = setting("loose", Option(
        "tones", "平仄: loose frees positions 1, 3 (, 5) but avoids 孤平 and 三平尾; strict follows "
        "the template everywhere; off.", _choice(*TONE_MODES), one_of(TONE_MODES),
        choices=TONE_MODES, poem_only=True))
    readings: str = setting("common", Option(
        "readings", "Which readings of a character (平/仄, rhyme group) a poem may use: common = "
        "those Tang poets used (poetgen/data/readings.json); all = every reading in the tables.",
        _choice(*READINGS), one_of(READINGS), choices=READINGS, poem_only=True))
    acrostic: str = setting("", Option(
        "acrostic", "藏头: the first characters of the lines, e.g. 春江花月.", _han_heads,
        "Chinese characters, one per line, or off", metavar="HEADS", poem_only=True))
    pattern: str = setting("", Option(
        "pattern", "Fixed characters per line, ? for free, lines split by /, e.g. '??春??/?????'.",
        str, "lines of characters and ?", sides=("cli",), poem_only=True))
    no_repeat: bool = setting(False, Option(
        "no-repeat", "No character twice in a poem.", _on_off, "on or off", flag=True,
        poem_only=True))
    ban: str = setting("", Option(
        "ban", "Characters never to use.", _text_or_off, "characters, or off", metavar="CHARS",
        poem_only=True))
    repeat_penalty: float = setting(2.25, Option(
        "repeat-penalty", "Make a character already in the poem this much less likely (in nats; "
        "叠字 poets use, such as 萧萧, stay free; 0 = off). --no-repeat forbids repeats outright.",
        _weight,
        "a number >= 0 (0 = off)", poem_only=True))  # 重字 of every form <= real + 10 points
    # -- what the poem is about ---------------------------------------------------------------
    theme: str = setting("", Option(
        "theme", "A subject, e.g. 秋, 送别 or a title: the poem holds keywords drawn from what real "
        "poems put beside it (the plan is shown; --json carries it).", _text_or_off,
        "a word or short phrase, or off", metavar="WORDS", poem_only=True))
    keywords: str = setting("", Option(
        "keywords", "Words the poem must hold, e.g. 春,雨,江 (characters or two-character words), "
        "each placed where its tones fit, one per line.", _keywords,
        "characters or two-character words separated by commas, or off", metavar="WORDS",
        poem_only=True))
    # -- search over candidates ---------------------------------------------------------------
    best_of: int = setting(16, Option(
        "best-of", "Sample this many candidates per poem; keep the best (log-probability per "
        "character, plus --coherence and --parallelism).", _whole(1, 1000),
        "a whole number from 1 to 1000", poem_only=True))  # 16 七绝 in ~0.3 s (README)
    line_keep: int = setting(4, Option(
        "line-keep", "After each line, go on from copies of the K likeliest of a poem's --best-of "
        "candidates, so a weak line is dropped where it is written (0 = off).", _whole(0, 1000),
        "a whole number from 0 to 1000 (0 = off)", metavar="K", poem_only=True))  # README
    coherence: float = setting(1.0, Option(
        "coherence", "Weight, when ranking candidates, of how well the lines keep one subject "
        "(0 = off).", _weight, "a number >= 0 (0 = off)", poem_only=True))
    parallelism: float = setting(0.25, Option(
        "parallelism", "Weight, when ranking 律诗 candidates, of 对仗 in the middle couplets "
        "(0 = off).", _weight, "a number >= 0 (0 = off)", poem_only=True))
    beam: int = setting(0, Option(
        "beam", "Beam search of this width instead of sampling (0 = off).", _whole(0, 1000),
        "a whole number from 0 to 1000 (0 = off)", poem_only=True))
    novel: Path | None = setting(None, Option(
        "novel", "Redo poems that copy a verse line of this corpus verbatim.", _path,
        "a corpus file", sides=("cli",), metavar="CORPUS", poem_only=True))

    # -- output -----------------------------------------------------------------------------
    by_line: bool = setting(False, Option(
        "by-line", "Print a poem one verse line per row (a 七律 is 64 characters on one row "
        "otherwise).", _on_off, "on or off", sides=("cli",), flag=True))

    # -- the table ----------------------------------------------------------------------------
    @classmethod
    def options(cls, side: Side | None = None) -> dict[str, Option]:
        """field name -> Option, for the fields `side` offers (all fields when side is None)."""
        table = {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}
        return {k: o for k, o in table.items() if side in (None, "api") or side in o.sides}

    @classmethod
    def field_for(cls, public_name: str, side: Side) -> str | None:
        """The field a front end's name (or alias) stands for: 'temp' -> 'temperature'."""
        for name, option in cls.options(side).items():
            if public_name == option.name or public_name in option.aliases:
                return name
        return None

    @classmethod
    def parse(cls, name: str, text: str, side: Side) -> Any:
        """The value of field `name` from `text`, or a ConfigError that names it as `side` does."""
        option = cls.options()[name]
        low, high = cls._limits(name, side)
        try:
            value = option.parse(text)
            if low is not None and not low <= value <= high:
                raise ValueError
        except (ValueError, TypeError, OverflowError):
            raise ConfigError(f"{cls.public(name, side)} needs {cls._expects(name, side)}, "
                              f"not {text!r}") from None
        return value

    @classmethod
    def from_python(cls, name: str, value: Any) -> Any:
        """A Python caller's value for field `name`, as the field holds it: text is read as the
        command line reads it ("off", "qijue", "0.5"); None turns off a field whose default is
        off (None or ""); anything else must be of the field's type: any integer (numpy's too)
        for an int, any real number for a float, never True for a number."""
        if isinstance(value, str):
            return cls.parse(name, value, "api")
        default = cls.default(name)
        if value is None and default in (None, ""):
            return default
        if cls._of_kind(name, value):
            kind = cls._kind(name)
            try:
                return kind(value) if kind in (int, float) else value  # numpy's become Python's
            except OverflowError:  # temperature=10**400
                pass
        raise cls._wrong_kind(name, value, "api")

    @classmethod
    def _limits(cls, name: str, side: Side) -> tuple[int | None, int | None]:
        # Python callers get the command line's limits; the REPL may have its own.
        limits = cls.options()[name].limits
        return limits.get(side) or limits.get("cli", (None, None))

    @classmethod
    def _expects(cls, name: str, side: Side) -> str:
        low, high = cls._limits(name, side)
        return cls.options()[name].expects.format(low=low, high=high)

    @classmethod
    def _wrong_kind(cls, name: str, value: Any, side: Side) -> ConfigError:
        expects = "True or False" if cls._kind(name) is bool else cls._expects(name, side)
        return ConfigError(f"{cls.public(name, side)} needs {expects}, not {value!r}")

    @classmethod
    def _kind(cls, name: str) -> type:
        """The type a field's value has when set: its annotation, less `| None`."""
        return _field_kinds(cls)[name]

    @classmethod
    def _of_kind(cls, name: str, value: Any) -> bool:
        kind = cls._kind(name)
        accepted = {int: numbers.Integral, float: numbers.Real,
                    Path: (str, os.PathLike)}.get(kind, kind)
        return isinstance(value, accepted) and isinstance(value, bool) == (kind is bool)

    @classmethod
    def public(cls, name: str, side: Side) -> str:
        """How `side` spells field `name`: --top-k, :top-k, or top_k (Python)."""
        return name if side == "api" else cls.options()[name].public(side)

    @classmethod
    def named_for(cls, message: str, side: Side) -> str:
        """A message that names settings as command-line flags (the decoder's, which serves all
        front ends), with the names `side` uses: '--acrostic' -> ':acrostic' in the REPL, where
        '--prime' is the start typed at the prompt."""
        if side == "cli":
            return message

        def public(flag: re.Match) -> str:
            name = cls.field_for(flag[1], "cli")
            if name == "prime" and side == "repl":
                return "the start"
            return cls.public(name, side) if name else flag[0]

        return re.sub(r"--([a-z][a-z-]*)", public, message)

    @classmethod
    def default(cls, name: str) -> Any:
        return {f.name: f.default for f in dataclasses.fields(cls)}[name]

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    def replace(self, **changes) -> "GenerationSettings":
        return dataclasses.replace(self, **changes)

    # -- validation ---------------------------------------------------------------------------
    def validate(self, side: Side = "api") -> "GenerationSettings":
        """Check every field and how they combine; messages name settings as `side` spells them.

        Values given as Python objects (the API) are checked by re-parsing their text form, so
        the rules are those of the front ends, word for word.
        """
        options = self.options()
        for name, option in options.items():
            value = getattr(self, name)
            if value is None and self.default(name) is None:
                continue
            if not self._of_kind(name, value):  # GenerationSettings(n="2") from Python
                raise self._wrong_kind(name, value, side)
            if isinstance(value, (bool, Path)) or value == self.default(name):
                continue
            self.parse(name, str(value), side)
        name = lambda key: self.public(key, side)  # noqa: E731
        if not self.form and self.mode == "poem":
            given = [k for k in self.changed() if options[k].poem_only]
            if given and side != "repl":  # the REPL keeps them for when a :form is set again
                raise ConfigError(f"{name(given[0])} needs {name('form')} (五绝 五律 七绝 七律)")
        if self.form:
            self._check_against_form(name)
        if self.prime and self.prime_file:
            raise ConfigError(f"{name('prime')} and {name('prime_file')} both give the start; "
                              "give one of them")
        if not self.writes_poem and self.n * self.max_chars > FREE_TEXT_CHARS:
            raise ConfigError(f"{name('n')} {self.n} x {name('max_chars')} {self.max_chars} is "
                              f"{self.n * self.max_chars:,} characters in one batch, more than "
                              f"{FREE_TEXT_CHARS:,}; ask for fewer texts or shorter ones")
        if self.beam and self.n > self.beam:
            raise ConfigError(f"{name('beam')} {self.beam} keeps {self.beam} candidates; ask for at "
                              f"most that many poems ({name('n')})")
        return self

    def _check_against_form(self, name: Callable[[str], str]) -> None:
        from poetgen.verse.prosody import get_form, han_only, scheme

        form = get_form(self.form)
        heads = han_only(self.acrostic)
        if len(heads) > form.lines:
            raise ConfigError(f"{name('acrostic')} {self.acrostic} has {len(heads)} characters but a "
                              f"{form.name} has {form.lines} lines; give at most {form.lines}")
        if self.rhyme_group and self.rhyme != "off":
            try:
                scheme(self.rhyme).resolve_group(self.rhyme_group)
            except PoetgenError as e:
                raise ConfigError(f"{name('rhyme_group')}: {e}") from None

    # -- what to write ------------------------------------------------------------------------
    @property
    def writes_poem(self) -> bool:
        return bool(self.form) and self.mode == "poem"

    # The settings poem_spec turns into the decoder's constraints: what makes a poem the poem
    # it is (the REPL's :line rewrites a line under its poem's own, not today's).
    POEM_CONSTRAINTS = ("form", "rhyme", "rhyme_group", "tones", "readings", "acrostic",
                        "pattern", "prime", "no_repeat", "ban")

    def poem_spec(self, prime: str | None = None):
        """The constraints of a poem as the decoder takes them (None for free text)."""
        if not self.writes_poem:
            return None
        from poetgen.verse.constrain import PoemSpec

        return PoemSpec.make(self.form, rhyme=None if self.rhyme == "off" else self.rhyme,
                             rhyme_group=self.rhyme_group, tones=self.tones,
                             acrostic=self.acrostic, pattern=self.pattern,
                             prime=self.prime if prime is None else prime,
                             no_repeat=self.no_repeat, banned=self.ban, readings=self.readings)

    def summary(self) -> str:
        """One line for a status bar: what the next generation will be."""
        if not self.writes_poem:
            shape = f"free text up to {self.max_chars} characters"
        else:
            shape = (f"form {self.form} · rhyme {self.rhyme}"
                     + (f" {self.rhyme_group}" if self.rhyme_group else "")
                     + f" · tones {self.tones}"
                     + (f" · acrostic {self.acrostic}" if self.acrostic else "")
                     + (" · no-repeat" if self.no_repeat else "")
                     + (f" · ban {self.ban}" if self.ban else "")
                     + (f" · theme {self.theme}" if self.theme else "")
                     + (f" · keywords {self.keywords}" if self.keywords else ""))
        search = (f" · beam {self.beam}" if self.beam else "") + \
            (f" · best-of {self.best_of}" if self.best_of > 1 else "")
        return (f"{shape} · temp {self.temperature:g} · top-k {self.top_k or 'off'} · "
                f"top-p {self.top_p:g} · n {self.n} · "
                f"seed {self.seed if self.seed is not None else 'random'}{search}")


__all__ = ["GenerationSettings", "Option", "Side"]

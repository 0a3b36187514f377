"""Constrained decoding: poems whose form, rhyme and tones are right by construction.

At every step the logits are masked to the characters allowed there, so any model at any
temperature writes a correct poem. What is allowed at step t:

    layout      a Han character inside a verse line, '，' or '。' at a line end, '\\n' at the end
    tones       the 平/仄 the template asks for at this position (loose mode frees 一三五)
    rhyme       at rhyme positions, a character sharing a group with the poem's earlier rhymes,
                never one already placed at a rhyme position (重韵), and only from a group
                with enough unused characters left for the rhymes still to come
    fixed       acrostic heads, --pattern characters, the prime, planned keywords (with_plans)
    banned      --ban characters, and with --no-repeat every character already used

Besides the masks, a repetition penalty lowers the log-probability of a character already in the
poem (or fixed later in it), so characters are reused about as rarely as poets reuse them;
叠字 (the character just written, in the same line, as in 萧萧) stays free.

Which of the four templates a poem follows is not chosen up front: each poem keeps the set of
templates its characters so far agree with (`alive`), and the mask is the union over that set,
so the model's own preferences pick the template. A character of two readings (多音字) keeps all
its rhyme groups as candidates (`cand`) until a later rhyme narrows them. The sets only shrink to
what the chosen character allows, so a step always has at least one allowed character: dead ends
can come only from --no-repeat exhausting a tiny vocabulary (or, in a vocabulary of a few dozen
characters, from a first line ending on a character its rhyme group needed), and such poems are
redone.

The masks know a character's readings, not which one a line gives it. Under modern rhyme the
checker reads a 多音字 by its neighbours (长 is cháng in 长城, zhǎng in 生长), so a finished
candidate is kept only if the checker passes it under the same settings (_checker_passes).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from poetgen.lm.corpus import NEWLINE, Vocab
from poetgen.errors import ConstraintError
from poetgen.lm.model import CharLSTM, evaluating, sampling
from poetgen.verse.prosody import (COMMA, PERIOD, PING, TONE_MODES, ZE, Form, Template,
                                   check_choice, free_positions, get_form, han_only, is_han,
                                   line_end_mark, line_rhymes, one_of, scheme, split_verse,
                                   templates)
from poetgen.lm.sample import (Sample, any_true, as_float, check_sampling_args, new_seed,
                               as_bool, prime_model, sample_next, uniforms, with_temperature)

ANY, NONE = 2, 3  # tone requirement codes besides 0 = 平 and 1 = 仄
FREE_MARKS = "?？_＿*"  # a free position in --pattern


@dataclass(frozen=True)
class PoemSpec:
    form: Form
    rhyme: str | None = "pingshui"  # pingshui | modern | None (no rhyme constraint)
    rhyme_group: str | None = None  # a group name or a character whose group to rhyme in
    tones: str = "loose"  # off | loose | strict
    acrostic: str = ""  # line heads (punctuation and spaces are ignored)
    pattern: str = ""  # e.g. "??春??/?????": fixed characters, '?' free, lines split by / or ，。
    prime: str = ""  # the poem's opening, continued by the model
    no_repeat: bool = False  # no character twice in a poem
    banned: str = ""  # characters never to use
    readings: str = "common"  # common: only readings Tang poets used (poetgen/data/readings.json) | all

    @classmethod
    def make(cls, form: str | Form, **kw) -> "PoemSpec":
        return cls(form if isinstance(form, Form) else get_form(form), **kw)

    @property
    def tone_scheme(self) -> str:
        return self.rhyme or "pingshui"  # tones follow the rhyme scheme; classical by default


@dataclass(frozen=True)
class Compiled:
    """A spec compiled against one vocabulary: tensors indexed by step t and vocabulary id.

    Never changed once made, its tensors neither (compile_spec keeps the last few and hands the
    same object out again; with_plans makes a new one): the step tables below are worked out
    from them once."""

    spec: PoemSpec
    vocab: Vocab
    steps: int
    static: torch.Tensor  # (P, T, V) bool: layout, fixed and banned characters, per plan
    tone_req: torch.Tensor  # (K, T) long: 0 平, 1 仄, 2 any, 3 not a verse position
    tone_ok: torch.Tensor  # (4, V) bool: chars that can be 平, 仄, any Han; all (punctuation steps)
    rhymes_at: torch.Tensor  # (K, T) bool: template k rhymes at step t
    member: torch.Tensor  # (V, G) bool: char -> rhyme groups
    rhymes_left: torch.Tensor  # (K, T) float: rhyme positions of template k at steps >= t
    rhyme_count: torch.Tensor  # (G,) float: writable characters of each group
    reserved: torch.Tensor  # (P, V) bool: characters fixed somewhere (the repetition penalty's)
    alive0: torch.Tensor  # (P, K) bool: templates the fixed characters allow
    cand0: torch.Tensor  # (P, G) bool: rhyme groups still possible before any rhyme
    group_names: list[str]
    templates: list[Template | None]
    positions: list[tuple[int, int]] = field(default_factory=list)  # step -> (line, col), col -1 = punct
    plan_notes: list[dict | None] = field(default_factory=lambda: [None])  # per plan, for Poem.plan
    fixed: dict[tuple[int, int], str] = field(default_factory=dict)  # the spec's fixed characters

    # P is 1 for a spec; `with_plans` makes P variants of one spec that differ only in more fixed
    # characters (where keywords go), so that one batch tries several plans at once.
    @property
    def plans(self) -> int:
        return self.static.size(0)

    # What the decoding loop asks at every step, worked out once: Python values where it
    # branches (a tensor's truth value costs a synchronising call per step) and float copies for
    # the products that take unions over templates and rhyme groups.
    @functools.cached_property
    def group_members(self) -> torch.Tensor:
        """(G, V) float: the characters of each rhyme group (`member` transposed, contiguous: a
        transposed view multiplied 3x slower)."""
        return self.member.float().T.contiguous()

    @functools.cached_property
    def tone_ok_float(self) -> torch.Tensor:
        return self.tone_ok.float()  # (4, V)

    @functools.cached_property
    def tone_onehot(self) -> torch.Tensor:
        """(T, K, 4) float: template k asks for tone code c at step t (one-hot), so that the
        codes a row's alive templates ask for are one (n, K) @ (K, 4) product."""
        return torch.nn.functional.one_hot(self.tone_req.T, 4).float()

    @functools.cached_property
    def rhyme_step(self) -> list[bool]:
        """Whether some template rhymes at step t."""
        return self.rhymes_at.any(0).tolist()

    @functools.cached_property
    def shared_rhyme_step(self) -> list[bool]:
        """Whether at step t every template rhymes, with as many rhymes still to come: then
        which characters may rhyme does not depend on the template (every rhyme but the first
        line's, which some templates leave unrhymed), and the step needs no (n, K, V) masks."""
        same_left = (self.rhymes_left == self.rhymes_left[:1]).all(0)  # (T,)
        return (self.rhymes_at.all(0) & same_left).tolist()

    @functools.cached_property
    def forced_at(self) -> list[int | None]:
        """The one character the layout allows at step t, in every plan, where there is one and
        no rhyme is decided: punctuation, the final newline, an acrostic head, a fixed
        character. Such a step is taken without masks or a draw (_take_forced)."""
        first = self.static.int().argmax(-1)  # (P, T): the first allowed character
        forced = ((self.static.sum(-1) == 1) & (first == first[:1])).all(0).tolist()  # (T,)
        return [int(first[0, t]) if forced[t] and not self.rhyme_step[t] else None
                for t in range(self.steps)]

    @functools.cached_property
    def verse_step(self) -> list[bool]:
        """Whether step t writes a verse character (not punctuation or the final newline)."""
        return (self.tone_req[0] != NONE).tolist()


Placed = list[tuple[tuple[int, int], str]]  # ((line, col), character), in order


def _fixed_chars(spec: PoemSpec) -> dict[tuple[int, int], str]:
    """(line, col) -> character, from the acrostic, the pattern and the prime; a position two of
    them fill with different characters is refused, naming both."""
    fixed: dict[tuple[int, int], str] = {}
    for what, placed in (("--acrostic", _acrostic_chars(spec)), ("--pattern", _pattern_chars(spec)),
                         ("--prime", _prime_chars(spec))):
        for pos, ch in placed:
            if pos in fixed and fixed[pos] != ch:
                raise ConstraintError(f"{what} puts {ch!r} at line {pos[0] + 1}, character "
                                      f"{pos[1] + 1}, where another constraint already puts "
                                      f"{fixed[pos]!r}")
            fixed[pos] = ch
    return fixed


def _acrostic_chars(spec: PoemSpec) -> Placed:
    f, heads = spec.form, han_only(spec.acrostic)
    if spec.acrostic and not heads:
        raise ConstraintError(f"--acrostic {spec.acrostic!r} holds no Chinese character")
    if len(heads) > f.lines:
        raise ConstraintError(f"--acrostic has {len(heads)} characters but a {f.name} has "
                              f"{f.lines} lines; give at most {f.lines}")
    return [((i, 0), ch) for i, ch in enumerate(heads)]


def _pattern_chars(spec: PoemSpec) -> Placed:
    f = spec.form
    if not spec.pattern:
        return []
    rows = [r.strip() for r in re.split(r"[/|，。,\n]", spec.pattern) if r.strip()]
    if len(rows) > f.lines:
        raise ConstraintError(f"--pattern has {len(rows)} lines but a {f.name} has {f.lines}")
    placed: Placed = []
    for i, row in enumerate(rows):
        if len(row) != f.chars_per_line:
            raise ConstraintError(f"--pattern line {i + 1} {row!r} has {len(row)} characters; "
                                  f"a {f.name} line has {f.chars_per_line} (use ? for a free one)")
        for j, ch in enumerate(row):
            if ch in FREE_MARKS:
                continue
            if not is_han(ch):
                raise ConstraintError(f"--pattern line {i + 1}: {ch!r} is not a Chinese "
                                      "character or ? (free)")
            placed.append(((i, j), ch))
    return placed


def _prime_chars(spec: PoemSpec) -> Placed:
    f, layout = spec.form, spec.form.layout()
    if len(spec.prime) > len(layout):
        raise ConstraintError(f"--prime is longer than a whole {f.name}")
    placed: Placed = []
    line = col = 0
    for k, (ch, want) in enumerate(zip(spec.prime, layout)):
        if want == "X" and not is_han(ch):
            raise ConstraintError(f"--prime {spec.prime!r}: character {k + 1} should be a "
                                  f"Chinese character in a {f.name} (layout {layout})")
        if want != "X" and ch != want:
            raise ConstraintError(f"--prime {spec.prime!r}: character {k + 1} should be "
                                  f"{want!r} in a {f.name} (layout {layout})")
        if want == "X":
            placed.append(((line, col), ch))
            col += 1
        else:
            line, col = line + 1, 0
    return placed


def compile_spec(spec: PoemSpec, vocab: Vocab, device: torch.device | str = "cpu",
                 fresh: bool = False) -> Compiled:
    """Build the masks once, and refuse impossible constraint sets before any generation.

    Four parts, each a named result: where characters and punctuation go (layout), which 平/仄
    each template wants where (tones), which positions rhyme and in which groups (rhyme), and
    which templates the fixed characters leave possible (fit).

    The last few results are kept (a Compiled is never changed once made): a REPL session or a
    program writes many poems from one spec, and compiling for the bundled model's vocabulary
    takes ~10 ms, as much as a tenth of writing a 七律. `fresh` compiles again (for timing it).
    """
    return (_compile.__wrapped__ if fresh else _compile)(spec, vocab, str(device))


@functools.lru_cache(maxsize=16)
def _compile(spec: PoemSpec, vocab: Vocab, device: str) -> Compiled:
    _check_spec(spec, vocab)
    fixed = _fixed_chars(spec)
    _check_fixed_chars(spec, vocab, fixed)
    writable = _writable(spec, vocab)
    layout = _layout(spec, vocab, fixed, writable)
    tones = _tones(spec, vocab, layout.positions, writable)
    rhyme = _rhyme(spec, vocab, layout.positions, tones.templates)
    alive0, cand0 = _fit(spec, vocab, fixed, layout, tones, rhyme)
    reserved = torch.zeros(len(vocab), dtype=torch.bool)
    for ch in fixed.values():
        reserved[vocab.id(ch)] = True
    return Compiled(spec, vocab, len(layout.positions), layout.static[None].to(device),
                    tones.required.to(device), tones.ok.to(device), rhyme.at.to(device),
                    rhyme.member.to(device), rhyme.left.to(device), rhyme.count.to(device),
                    reserved[None].to(device), alive0[None].to(device), cand0[None].to(device),
                    rhyme.group_names, tones.templates, layout.positions, fixed=fixed)


def with_plans(c: Compiled, extras: list[dict[tuple[int, int], str]],
               notes: list[dict | None]) -> Compiled:
    """P = len(extras) variants of a compiled spec (P = 1), each with more fixed characters:
    (line, col) -> character, e.g. where a plan puts its keywords. Each must fit (placement_fits)."""
    statics, alives, cands, reserveds = [], [], [], []
    for extra in extras:
        static = c.static[0].clone()
        _fix(static, extra, c.positions, c.vocab, c.spec)
        alive, cand = _fit_extra(c, extra)
        if not alive.any():
            raise ConstraintError(f"no tonal template fits the planned characters {extra}")
        reserved = c.reserved[0].clone()
        for ch in extra.values():
            reserved[c.vocab.id(ch)] = True
        statics.append(static)
        alives.append(alive)
        cands.append(cand)
        reserveds.append(reserved)
    return dataclasses.replace(c, static=torch.stack(statics), alive0=torch.stack(alives),
                               cand0=torch.stack(cands), reserved=torch.stack(reserveds),
                               plan_notes=list(notes))


@dataclass
class _Layout:
    positions: list[tuple[int, int]]  # step -> (line, col); col -1 = the punctuation or the end
    static: torch.Tensor  # (T, V) bool: what the layout, fixed and banned characters allow


@dataclass
class _Tones:
    templates: list[Template | None]  # [None] with tones off
    required: torch.Tensor  # (K, T) long: 0 平, 1 仄, ANY, or NONE (not a verse position)
    ok: torch.Tensor  # (4, V) bool: characters that can stand for 平, 仄, ANY, NONE


@dataclass
class _Rhyme:
    group_names: list[str]  # [] without a rhyme scheme
    member: torch.Tensor  # (V, G) bool: character -> its rhyme groups
    at: torch.Tensor  # (K, T) bool: template k rhymes at step t
    cand0: torch.Tensor  # (G,) bool: groups allowed before any rhyme (level groups, --rhyme-group)
    left: torch.Tensor  # (K, T) float: rhyme positions of template k at steps >= t
    count: torch.Tensor  # (G,) float: writable characters in each group

    @functools.cached_property
    def member_float(self) -> torch.Tensor:
        """`member` as 0.0/1.0, once: every template's conflict check multiplies by it."""
        return as_float(self.member)


def _check_spec(spec: PoemSpec, vocab: Vocab) -> None:
    """The spec's settings are known values (scheme() checks the readings and the rhyme scheme)
    and the vocabulary has what every poem needs."""
    check_choice("tones", spec.tones, TONE_MODES)
    for ch, name in ((COMMA, "'，'"), (PERIOD, "'。'"), (NEWLINE, "the newline (end of poem)")):
        if ch not in vocab:
            raise ConstraintError(f"the model's vocabulary has no {name}; it was not trained on "
                                  "one-poem-per-line Chinese verse, so it cannot write a "
                                  f"{spec.form.name}")


def _banned(spec: PoemSpec) -> set[str]:
    return set(spec.banned) - {" ", ",", "，"}


def _check_fixed_chars(spec: PoemSpec, vocab: Vocab, fixed: dict[tuple[int, int], str]) -> None:
    for (i, j), ch in fixed.items():
        if ch not in vocab:
            raise ConstraintError(f"{ch!r} (line {i + 1}, character {j + 1}) is not in the model's "
                                  "vocabulary, so it cannot be written; choose another character")
    clash = sorted({ch for ch in fixed.values() if ch in _banned(spec)})
    if clash:
        fixing = [flag for flag, value in (("--acrostic", spec.acrostic),
                                           ("--pattern", spec.pattern), ("--prime", spec.prime))
                  if any(ch in value for ch in clash)]  # what put them in place (_fixed_chars)
        raise ConstraintError(f"{' '.join(clash)} is both required and banned; take it out of "
                              f"--ban, or out of {one_of(fixing)}")
    if spec.no_repeat:
        values = list(fixed.values())
        twice = sorted({c for c in values if values.count(c) > 1})
        if twice:
            raise ConstraintError(f"--no-repeat, but the fixed characters repeat {' '.join(twice)}")
    last = spec.form.chars_per_line - 1
    ends = [ch for (i, j), ch in sorted(fixed.items()) if j == last and line_rhymes(i, True)]
    twice = sorted({c for c in ends if ends.count(c) > 1})
    if twice:
        raise ConstraintError(f"the fixed characters end two rhyming lines with {' '.join(twice)} "
                              "(重韵, a rhyme used twice); move or change one")


def _writable(spec: PoemSpec, vocab: Vocab) -> torch.Tensor:
    """(V,) bool: the characters a verse position may hold (Han, not banned)."""
    writable = _vocab_table(tuple(vocab.chars), spec.tone_scheme, spec.readings).han.clone()
    banned = [vocab.id(c) for c in _banned(spec) if c in vocab]
    writable[banned] = False
    return writable


@dataclass(frozen=True)
class _VocabTable:
    """What a scheme says about every character of a vocabulary, once per (vocabulary, scheme)."""

    han: torch.Tensor  # (V,) bool: a Han character
    ping: torch.Tensor  # (V,) bool: has a level (平) reading
    ze: torch.Tensor  # (V,) bool: has an oblique (仄) reading
    member: torch.Tensor  # (V, G) bool: in rhyme group g


@functools.lru_cache(maxsize=8)
def _vocab_table(chars: tuple[str, ...], scheme_name: str, readings: str) -> _VocabTable:
    rs = scheme(scheme_name, readings)
    han = [is_han(c) for c in chars]
    tone = [rs.tone(c) if h else None for c, h in zip(chars, han)]
    gindex = {g: k for k, g in enumerate(rs.group_names)}
    pairs = [(v, gindex[g]) for v, (c, h) in enumerate(zip(chars, han)) if h for g in rs.groups(c)]
    member = torch.zeros(len(chars), max(1, len(rs.group_names)), dtype=torch.bool)
    if pairs:
        member[torch.tensor(pairs).T.unbind()] = True
    return _VocabTable(torch.tensor(han), torch.tensor([t in (PING, "both") for t in tone]),
                       torch.tensor([t in (ZE, "both") for t in tone]), member)


def _layout(spec: PoemSpec, vocab: Vocab, fixed: dict[tuple[int, int], str],
            writable: torch.Tensor) -> _Layout:
    """Steps: each line's characters then its punctuation, then the newline that ends the poem."""
    f, V = spec.form, len(vocab)
    positions: list[tuple[int, int]] = []
    rows: list[torch.Tensor] = []
    for i in range(f.lines):
        for j in range(f.chars_per_line):
            positions.append((i, j))
            rows.append(_one_hot(V, vocab.id(fixed[(i, j)])) if (i, j) in fixed else writable.clone())
        positions.append((i, -1))
        rows.append(_one_hot(V, vocab.id(line_end_mark(i))))
    positions.append((f.lines, -1))
    rows.append(_one_hot(V, vocab.newline_id))
    static = torch.stack(rows)
    _fix(static, fixed, positions, vocab, spec)
    return _Layout(positions, static)


def _fix(static: torch.Tensor, fixed: dict[tuple[int, int], str], positions: list[tuple[int, int]],
         vocab: Vocab, spec: PoemSpec) -> None:
    """Write fixed characters into a (T, V) mask, in place, with what they forbid elsewhere."""
    last = spec.form.chars_per_line - 1
    for t, pos in enumerate(positions):
        if pos in fixed:
            static[t] = _one_hot(static.size(1), vocab.id(fixed[pos]))
    # A character fixed at a line end may not end another line first (it would rhyme twice).
    end_ids = sorted({vocab.id(ch) for (i, j), ch in fixed.items() if j == last})
    for t, (i, j) in enumerate(positions):
        if j == last and (i, j) not in fixed and end_ids:
            static[t, end_ids] = False
    if spec.no_repeat and fixed:  # a fixed character used early would block its own position later
        reserved = torch.tensor(sorted({vocab.id(ch) for ch in fixed.values()}))
        for t, pos in enumerate(positions):
            if pos[1] >= 0 and pos not in fixed:
                static[t, reserved] = False


def _tones(spec: PoemSpec, vocab: Vocab, positions: list[tuple[int, int]],
           writable: torch.Tensor) -> _Tones:
    """What each template asks at each step, and which characters can give it."""
    f, table = spec.form, _vocab_table(tuple(vocab.chars), spec.tone_scheme, spec.readings)
    ok = torch.stack([
        writable & table.ping,
        writable & table.ze,
        writable,
        torch.ones(len(vocab), dtype=torch.bool),  # not a verse position: the static mask decides
    ])
    tpls: list[Template | None] = templates(f) if spec.tones != "off" else [None]

    def asks(tpl: Template | None, i: int, j: int) -> int:
        if j < 0:
            return NONE
        if tpl is None:
            return ANY
        free = free_positions(f.chars_per_line, tpl.line_types[i], spec.tones)
        last = j == f.chars_per_line - 1
        return ANY if (j in free and not last) else (0 if tpl.lines[i][j] == PING else 1)

    # Python lists, then one tensor: a tensor written element by element cost ~0.7 ms a 七律.
    required = torch.tensor([[asks(tpl, i, j) for i, j in positions] for tpl in tpls],
                            dtype=torch.long)
    return _Tones(tpls, required, ok)


def _rhyme(spec: PoemSpec, vocab: Vocab, positions: list[tuple[int, int]],
           tpls: list[Template | None]) -> _Rhyme:
    """Rhyme positions per template, every character's groups, and the groups allowed at all."""
    f = spec.form
    rs = scheme(spec.rhyme, spec.readings) if spec.rhyme else None
    group_names = rs.group_names if rs else []
    gindex = {g: k for k, g in enumerate(group_names)}
    at = torch.zeros(len(tpls), len(positions), dtype=torch.bool)
    cand0 = torch.zeros(max(1, len(group_names)), dtype=torch.bool)
    if rs is None:
        member = torch.zeros(len(vocab), 1, dtype=torch.bool)
        return _Rhyme(group_names, member, at, cand0, at.float(), cand0.float())
    member = _vocab_table(tuple(vocab.chars), spec.rhyme, spec.readings).member
    at = torch.tensor([[j == f.chars_per_line - 1 and line_rhymes(i, tpl is not None and
                                                                tpl.first_line_rhymes)
                        for i, j in positions] for tpl in tpls])
    left = at.float().flip(1).cumsum(1).flip(1)  # rhymes at t and after
    sizes = as_float(member).T @ as_float(_writable(spec, vocab))  # (G,) writable characters
    allowed = rs.level_groups if spec.tones != "off" else set(group_names)
    if spec.rhyme_group:
        wanted = rs.resolve_group(spec.rhyme_group)
        if spec.tones != "off" and not wanted & allowed:
            raise ConstraintError(f"rhyme group {spec.rhyme_group!r} is an oblique (仄) group, "
                                  "but the tonal templates rhyme in level (平) groups; choose a "
                                  "level group or use --tones off")
        allowed = allowed & wanted
    # No character rhymes twice (重韵), so a group needs a character for every rhyme position.
    rhymes = int(at.sum(1).max())
    big_enough = {g for g in allowed if int(sizes[gindex[g]]) >= rhymes}
    if spec.rhyme_group and not big_enough and any(int(sizes[gindex[g]]) for g in allowed):
        raise ConstraintError(f"rhyme group {spec.rhyme_group!r} has fewer characters in the model's "
                              f"vocabulary than the poem's {rhymes} rhymes, and no character may "
                              "rhyme twice; choose a larger group")
    for g in big_enough or allowed:  # none at all: _fit names the position that cannot rhyme
        cand0[gindex[g]] = True
    return _Rhyme(group_names, member, at, cand0, left, sizes)


def _fit(spec: PoemSpec, vocab: Vocab, fixed: dict[tuple[int, int], str], layout: _Layout,
         tones: _Tones, rhyme: _Rhyme) -> tuple[torch.Tensor, torch.Tensor]:
    """(alive0, cand0): the templates the fixed characters allow, and the rhyme groups left."""
    alive0 = torch.ones(len(tones.templates), dtype=torch.bool)
    conflicts: list[tuple[str, str]] = []  # (why, what to change) of each template that fails
    for k in range(len(tones.templates)):
        conflict = _template_conflict(k, layout, fixed, vocab, tones, rhyme)
        if conflict:
            alive0[k] = False
            conflicts.append(conflict)
    if not alive0.any():
        whys = sorted({why for why, _ in conflicts})
        fixes = list(dict.fromkeys(_FIXES[kind](spec) for _, kind in conflicts))
        what = whys[0] if len(whys) == 1 else ("no tonal template fits the constraints: "
                                               + "; ".join(whys))
        raise ConstraintError(f"{what} — {'; or '.join(fixes)}")
    fixed_ids = {t: vocab.id(fixed[pos]) for t, pos in enumerate(layout.positions) if pos in fixed}
    return alive0, _shared_rhymes(rhyme.cand0, alive0, fixed_ids, rhyme.at, rhyme.member,
                                  bool(rhyme.group_names))


def _shared_rhymes(cand: torch.Tensor, alive: torch.Tensor, fixed_ids: dict[int, int],
                   rhymes_at: torch.Tensor, member: torch.Tensor, rhymed: bool) -> torch.Tensor:
    """The rhyme groups `cand` (G,) narrowed up front by each fixed character (step -> id) at a
    step where every surviving template (`alive` (K,)) rhymes: any poem finished rhymes there."""
    cand = cand.clone()
    if rhymed and alive.any():
        for t, v in fixed_ids.items():
            if bool(rhymes_at[alive, t].all()):
                cand &= member[v]
    return cand


def _one_hot(V: int, index: int) -> torch.Tensor:
    row = torch.zeros(V, dtype=torch.bool)
    row[index] = True
    return row


def _looser_tones(spec: PoemSpec) -> str:
    return {"strict": "--tones loose or off", "loose": "--tones off"}.get(spec.tones, "")


# What to change, for each kind of template conflict (_template_conflict), given the spec.
_FIXES: dict[str, Callable[[PoemSpec], str]] = {
    "tone": lambda spec: "use " + one_of(("another character", _looser_tones(spec))),
    "rhyme": lambda spec: ("give fixed characters that rhyme with each other and with the rhyme "
                           "group (`poetgen check` shows a character's groups)"),
    "empty": lambda spec: one_of(("choose another rhyme group",
                                  "use " + _looser_tones(spec) if _looser_tones(spec) else "",
                                  "ban fewer characters" if _banned(spec) else "")),
    "small": lambda spec: "choose another rhyme group",
}


def _template_conflict(k: int, layout: _Layout, fixed: dict[tuple[int, int], str], vocab: Vocab,
                       tones: _Tones, rhyme: _Rhyme) -> tuple[str, str] | None:
    """Why template k cannot hold these constraints and the kind of conflict (a key of _FIXES),
    or None if it can."""
    cand = rhyme.cand0.clone()
    where = {pos: t for t, pos in enumerate(layout.positions)}
    for (i, j), ch in sorted(fixed.items()):
        t, v = where[(i, j)], vocab.id(ch)
        if not tones.ok[tones.required[k, t], v]:
            need = PING if tones.required[k, t] == 0 else ZE
            return (f"{ch!r} at line {i + 1}, character {j + 1} cannot be {need} as the tonal "
                    "template needs"), "tone"
        if rhyme.at[k, t]:
            cand = cand & rhyme.member[v]
            if not cand.any():
                return (f"{ch!r} at line {i + 1}, character {j + 1} is at a rhyme position but "
                        "does not rhyme with the other fixed rhymes or the rhyme group"), "rhyme"
    if rhyme.group_names and not cand.any():
        return "no rhyme group is left to rhyme in", "rhyme"
    rhymable = as_bool(rhyme.member_float @ as_float(cand))  # (V,): in a candidate group
    ok = layout.static & tones.ok[tones.required[k]]  # (T, V)
    ok[rhyme.at[k]] &= rhymable
    empty = (~any_true(ok, 1)).nonzero()
    if len(empty):
        t = int(empty[0])
        i, j = layout.positions[t]
        what = "rhyming " if rhyme.at[k, t] else ""
        return (f"no {what}character of the model's vocabulary fits line {i + 1}, character "
                f"{j + 1}"), "empty"
    rhymes = int(rhyme.at[k].sum())
    if rhyme.group_names and not (cand & (rhyme.count >= rhymes)).any():
        return (f"no rhyme group left has {rhymes} different characters in the model's vocabulary "
                "(a poem never rhymes on one character twice)"), "small"
    return None


def placement_fits(c: Compiled, extra: dict[tuple[int, int], str]) -> bool:
    """Whether more fixed characters ((line, col) -> character) on a compiled spec (P = 1) leave
    some template able to hold them: each allowed where it stands (layout, fixed, banned, tones),
    the rhymes in one group with enough characters, no rhyme twice. Cheap: for planning."""
    where = {pos: t for t, pos in enumerate(c.positions)}
    last = c.spec.form.chars_per_line - 1
    ends = [ch for (i, j), ch in extra.items() if j == last]
    if len(ends) != len(set(ends)):
        return False
    for pos, ch in extra.items():
        if pos not in where or ch not in c.vocab or not c.static[0, where[pos], c.vocab.id(ch)]:
            return False
    return bool(_fit_extra(c, extra)[0].any())


def _fit_extra(c: Compiled, extra: dict[tuple[int, int], str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(alive (K,), cand (G,)) of a compiled spec (P = 1) once `extra` characters are fixed too."""
    where = {pos: t for t, pos in enumerate(c.positions)}
    ids = {where[pos]: c.vocab.id(ch) for pos, ch in extra.items()}
    alive = c.alive0[0].clone()
    for k in range(len(c.templates)):
        if not alive[k]:
            continue
        cand = c.cand0[0].clone()
        for t, v in ids.items():
            if not c.tone_ok[c.tone_req[k, t], v]:
                alive[k] = False
                break
            if c.rhymes_at[k, t]:
                cand = cand & c.member[v]
        if alive[k] and c.group_names:
            alive[k] = bool((cand & (c.rhyme_count >= c.rhymes_left[k, 0])).any())
    return alive, _shared_rhymes(c.cand0[0], alive, ids, c.rhymes_at, c.member,
                                 bool(c.group_names))


# --------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Poem(Sample):
    """A constrained poem: the text and its score (see Sample), and how it met the constraints."""

    form: str = ""  # 五绝 五律 七绝 七律
    template: str | None = None  # the tonal template it follows (None with --tones off)
    rhyme_group: str | None = None  # the group(s) its rhymes share (None without rhyme)
    repeat_penalty: float = 0.0  # the repetition penalties its characters took while sampling
    scores: dict[str, float] = field(default_factory=dict)  # what ranked it (see verse.scores)
    plan: dict | None = None  # the theme and keyword plan it was written to (see verse.plan)

    @property
    def penalized_logprob(self) -> float:
        """Log-probability per character less the repetition penalties: what sampling aimed at."""
        return self.mean_logprob - self.repeat_penalty / max(1, self.num_chars)

    def to_dict(self) -> dict:
        d = super().to_dict() | {"form": self.form, "template": self.template,
                                 "rhyme_group": self.rhyme_group}
        if self.scores:
            d["scores"] = {k: round(v, 4) for k, v in self.scores.items()}
        if self.plan is not None:
            d["plan"] = self.plan
        return d


class _Hyps:
    """Constraint state of a batch of partial poems; rows can be reordered (beam search)."""

    def __init__(self, c: Compiled, n: int, device, plan: torch.Tensor | None = None):
        V = len(c.vocab)
        self.plan = torch.arange(n, device=device) % c.plans if plan is None else plan  # (n,)
        self.alive = c.alive0[self.plan].clone()  # (n, K)
        self.cand = c.cand0[self.plan].clone()  # (n, G)
        self.used = torch.zeros(n, V, dtype=torch.bool, device=device)
        self.rhymed = torch.zeros(n, V, dtype=torch.bool, device=device)  # at a rhyme position
        self.tokens = torch.zeros(n, c.steps, dtype=torch.long, device=device)
        self.logprob = torch.zeros(n, device=device)  # the model's, temperature 1, no penalty
        self.penalty = torch.zeros(n, device=device)  # repetition penalties of the chosen characters
        self.failed = torch.zeros(n, dtype=torch.bool, device=device)

    FIELDS = ("plan", "alive", "cand", "used", "rhymed", "tokens", "logprob", "penalty", "failed")

    def select(self, rows: torch.Tensor) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[rows])


def _allowed(c: Compiled, h: _Hyps, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n, V) allowed characters at step t, and where the templates disagree about rhyming here
    (n, K, V) allowed per template (elsewhere None: a character's templates are then those whose
    tone it has, see _advance)."""
    static = c.static[0, t][None] if c.plans == 1 else c.static[h.plan, t]  # (1 or n, V)
    if not c.rhyme_step[t] or c.shared_rhyme_step[t]:  # two small products, no (n, K, V) masks
        allowed = _tone_and_repeat_ok(c, h, t) & static
        if c.rhyme_step[t]:
            allowed = allowed & _may_rhyme(c, h, c.rhymes_left[:1, t])[:, 0]
        return allowed, None
    per = c.tone_ok[c.tone_req[:, t]][None] & static[:, None]  # (n, K, V)
    rhyme_ok = _may_rhyme(c, h, c.rhymes_left[:, t])  # (n, K, V)
    per = per & torch.where(c.rhymes_at[:, t][None, :, None], rhyme_ok, True)
    per = per & h.alive[:, :, None]
    if c.spec.no_repeat and c.verse_step[t]:
        per = per & ~h.used[:, None, :]
    return any_true(per, 1), per


def _tone_and_repeat_ok(c: Compiled, h: _Hyps, t: int, chars: int | slice = slice(None)
                        ) -> torch.Tensor:
    """Whether a tone some alive template asks for at step t is one `chars` can take, and (with
    --no-repeat, at a verse step) the row has not used them yet: (n, V) for every character,
    (n,) for one."""
    asked = h.alive.float() @ c.tone_onehot[t]  # (n, 4): the tone codes alive templates ask for
    ok = as_bool(asked @ c.tone_ok_float[:, chars])
    if c.spec.no_repeat and c.verse_step[t]:
        ok = ok & ~h.used[:, chars]
    return ok


def _may_rhyme(c: Compiled, h: _Hyps, rhymes_left: torch.Tensor) -> torch.Tensor:
    """(n, K, V): characters of a rhyme group with enough unused characters for the K
    `rhymes_left` (K,) still to come, that no rhyme position holds yet (no 重韵).

    Only the g groups some row may still rhyme in take part (the union over the rows): after a
    poem's first rhyme each row keeps one or two of the 106, and the (n K, g) @ (g, V) product
    shrinks with them; the other groups' columns would be all false.
    """
    live = any_true(h.cand, 0).nonzero().view(-1)  # (g,)
    members = c.group_members[live]  # (g, V): rows, which gather 6x faster than columns
    free = c.rhyme_count[live][None] - as_float(h.rhymed) @ members.T  # (n, g)
    enough = free[:, None, :] >= rhymes_left[None, :, None]  # (n, K, g)
    groups = as_float(h.cand[:, None, live] & enough)
    return as_bool(groups @ members) & ~h.rhymed[:, None, :]


def _advance(c: Compiled, h: _Hyps, t: int, token: torch.Tensor, per: torch.Tensor | None) -> None:
    """Record `token` (n,) at step t: prune templates, narrow rhyme candidates."""
    n = token.numel()
    rows = torch.arange(n, device=token.device)
    h.tokens[:, t] = token
    if per is None:  # templates whose tone here the character has
        h.alive = h.alive & c.tone_ok[:, token][c.tone_req[:, t]].T
    else:  # templates under which this character was allowed
        h.alive = per[rows, :, token]
    rhymes = c.rhymes_at[:, t]
    if c.rhyme_step[t]:
        # A character allowed both as a rhyme and not (e.g. line 1's end, 'both' tone) is read as
        # not rhyming when some template allows that: the narrower reading keeps more freedom.
        nonrhyme_alive = (h.alive & ~rhymes).any(1, keepdim=True)
        h.alive = torch.where(nonrhyme_alive, h.alive & ~rhymes, h.alive)
        is_rhyme = (h.alive & rhymes).any(1)
        narrowed = h.cand & c.member[token]
        h.cand = torch.where(is_rhyme[:, None], narrowed, h.cand)
    if c.rhyme_step[t] or c.positions[t] == (0, c.spec.form.chars_per_line - 1):
        # Kept from every later rhyme, line 1's end too, rhyming or not: a reader hears the same
        # character end two of these lines as a repeated rhyme either way.
        h.rhymed[rows, token] = True
    h.used[rows, token] = True


def _repeat_penalty(c: Compiled, h: _Hyps, t: int, penalty: float,
                    doubles: torch.Tensor | None = None) -> torch.Tensor | None:
    """(n, V) what to subtract from the log-probabilities at step t: `penalty` for a character
    already in the poem or fixed later in it, except the one just written in this line when it
    may double (叠字; `doubles` (V,) bool, None = any character may)."""
    i, j = c.positions[t]
    if not penalty or j < 0:
        return None
    reserved = c.reserved[0] if c.plans == 1 else c.reserved[h.plan]  # (V,) or (n, V)
    pen = as_float(h.used | reserved).mul_(penalty)
    if j > 0:
        rows = torch.arange(pen.size(0), device=pen.device)
        prev = h.tokens[:, t - 1]
        free = torch.ones_like(prev, dtype=torch.bool) if doubles is None else doubles[prev]
        pen[rows, prev] = torch.where(free, 0.0, pen[rows, prev])
    return pen


@torch.no_grad()
def generate_poems(model: CharLSTM, compiled: Compiled, n: int = 1, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                   best_of: int = 1, beam: int = 0, novel_lines: set[str] | None = None,
                   repeat_penalty: float = 0.0, doubles: str | None = None,
                   rank: Rank | None = None, line_keep: int = 0, max_rounds: int = 8) -> list[Poem]:
    """`n` poems that satisfy `compiled`'s constraints.

    The defaults are the plain decoder's (temperature 1, one candidate, no penalty, no pruning);
    the product's (GenerationSettings: 0.8, best-of 16, ...) come through poetgen.write, which
    `sample`, the REPL and the API call.

    best_of: sample that many candidates per poem and keep the best by `rank` (default: the
    model's log-probability per character less the repetition penalties taken). beam: beam search of that width instead of sampling;
    returns its n best. novel_lines: verse lines that must not be copied (poems that copy one are
    redone). repeat_penalty: subtracted from the log-probability of a character already in the
    poem while sampling, except a 叠字 of a character in `doubles` (None: of any character); the
    poems' scores stay the model's own. line_keep: after each line but the last, the `line_keep`
    likeliest of a poem's best_of candidates go on, each copied; 0 = off.
    """
    check_sampling_args(temperature, top_k, top_p)
    seed = new_seed() if seed is None else seed
    with evaluating(model):
        may_double = None if doubles is None else torch.tensor(
            [ch in doubles for ch in compiled.vocab.chars], device=model.start_h.device)
        penalty = (repeat_penalty, may_double)
        return _generate_poems(model, compiled, n, temperature, top_k, top_p, seed, best_of, beam,
                               novel_lines, penalty, rank or _by_logprob, line_keep, max_rounds)


Rank = Callable[[list[Poem]], list[float]]  # candidates -> a score each, higher is better


def _by_logprob(poems: list[Poem]) -> list[float]:
    return [p.penalized_logprob for p in poems]


def _generate_poems(model, compiled, n, temperature, top_k, top_p, seed, best_of, beam, novel_lines,
                    penalty, rank, line_keep, max_rounds) -> list[Poem]:
    passes = _checker_passes(compiled.spec)
    if beam:
        if n > beam:
            raise ConstraintError(f"--beam {beam} keeps {beam} candidates; ask for at most that many poems")
        with sampling(model):
            poems = _beam(model, compiled, beam, seed, penalty)
        poems = [p for p in poems if not _copies(p.text, novel_lines) and passes(p.text)]
        if len(poems) < n:
            unmet = one_of(("avoid the --novel corpus" if novel_lines else "",
                            "pass the checker" if passes is not _always else ""))
            raise ConstraintError(f"beam search found only {len(poems)} of the {n} poem(s) asked "
                                  f"for that {unmet}; sample instead (drop --beam)")
        return poems[:n]
    result: list[Poem | None] = [None] * n
    gen = torch.Generator(device=model.start_h.device).manual_seed(seed)
    poems_per_batch = max(1, ROWS_PER_BATCH // best_of)
    stalled, why = 0, set()  # rounds in a row that finished no poem; what set poems aside
    while stalled < max_rounds:
        todo = [i for i, p in enumerate(result) if p is None]
        if not todo:
            break
        why.clear()
        for start in range(0, len(todo), poems_per_batch):
            batch = todo[start:start + poems_per_batch]
            # Candidate b of poem i follows plan (i * best_of + b) mod P, in every round.
            plan = torch.tensor([(i * best_of + b) % compiled.plans
                                 for i in batch for b in range(best_of)], device=model.start_h.device)
            with sampling(model):  # not around `rank`, which may read whole poems with the model
                cands = _sample(model, compiled, len(batch) * best_of, temperature, top_k, top_p,
                                gen, seed, penalty, plan, best_of, line_keep)
            for slot, i in enumerate(batch):
                result[i], reason = _best(cands[slot * best_of:(slot + 1) * best_of], rank,
                                          novel_lines, passes)
                why.add(reason)
        # A round that finishes some poem may be followed by any number more (the checker sets
        # a third of modern 七律 aside: 10,000 poems take a dozen rounds); eight that finish
        # none mean the constraints leave (almost) nothing.
        stalled = stalled + 1 if all(result[i] is None for i in todo) else 0
    missing = sum(p is None for p in result)
    if missing:
        reasons = "; or ".join(_SET_ASIDE[r] for r in sorted(why - {""}))
        raise ConstraintError(f"{missing} poem(s) could not be finished in {max_rounds} tries in "
                              f"a row: {reasons}")
    return result  # type: ignore[return-value]


# Why a poem's candidates were all set aside, and what to change (_best's reasons).
_SET_ASIDE = {
    "dead end": "--no-repeat, or the rhyme group's unused characters (no 重韵), ran out; raise "
                "--temp or relax the constraints",
    "novel": "every try copied a line of the --novel corpus; raise --temp or use another corpus",
    "checker": "the checker read a 多音字 in its line with a tone or rhyme the template does not "
               "allow (modern rhyme reads characters in context); use --readings all or --rhyme "
               "pingshui",
}


def _best(cands: list[Poem | None], rank: Rank, novel_lines: set[str] | None,
          passes: Callable[[str], bool]) -> tuple[Poem | None, str]:
    """One poem's best candidate by `rank` among those finished (not None) that copy no
    `novel_lines` and that `passes`; ties go to the first, as max takes it. Else None and why
    (a key of _SET_ASIDE); "" when a poem was found."""
    finished = [p for p in cands if p is not None]
    fresh = [p for p in finished if not _copies(p.text, novel_lines)]
    if not fresh:
        return None, "novel" if finished else "dead end"
    scores = rank(fresh)
    for k in sorted(range(len(fresh)), key=scores.__getitem__, reverse=True):
        if passes(fresh[k].text):
            return fresh[k], ""
    return None, "checker"


# Rows sampled together at most (poems x best_of): a batch's masks take (rows, templates,
# vocabulary) booleans, so `sample --n 10000` goes in batches, not 160,000 rows at once.
ROWS_PER_BATCH = 2048


def _always(text: str) -> bool:
    return True


def _checker_passes(spec: PoemSpec) -> Callable[[str], bool]:
    """What a finished poem must pass besides the masks: where the scheme reads characters in
    context (see the module's docstring), `check_poem` under the spec's settings; else nothing,
    since the masks and the checker read each character alike."""
    if not (spec.rhyme and scheme(spec.rhyme).reads_in_context):
        return _always
    from poetgen.verse.check import check_poem  # the checker imports the scorer, not the decoder

    return lambda text: check_poem(text, spec.rhyme, spec.tones, spec.readings).ok


def _copies(text: str, novel_lines: set[str] | None) -> bool:
    return bool(novel_lines) and any(line in novel_lines for line in split_verse(text))


def _sample(model, c: Compiled, n, temperature, top_k, top_p, gen, seed,
            penalty=(0.0, None), plan=None, group=1, keep=0) -> list[Poem | None]:
    """n rows sampled in groups of `group` (one poem's candidates). With `keep`, after every line
    but the last each group keeps its `keep` best rows (log-probability less the repetition
    penalties taken) and goes on from copies of them."""
    device = model.start_h.device
    out, state = prime_model(model, [], n)
    h = _Hyps(c, n, device, plan)
    prune_after = {t for t, (i, j) in enumerate(c.positions)
                   if j < 0 and i < c.spec.form.lines - 1} if 0 < keep < group else set()
    for t in range(c.steps):
        pen = _repeat_penalty(c, h, t, *penalty)
        if c.forced_at[t] is None:
            logp = model.log_probs(out)  # (n, V)
            token, per = _draw(c, h, t, logp if pen is None else logp - pen, temperature, gen,
                               top_k, top_p)
            h.logprob += logp.gather(1, token[:, None]).squeeze(1)
        else:
            token, per = _take_forced(c, h, t, c.forced_at[t], gen), None
            h.logprob += model.log_prob_of(out, c.forced_at[t])
        if pen is not None:
            h.penalty += pen.gather(1, token[:, None]).squeeze(1)
        _advance(c, h, t, token, per)
        if h.failed.any():  # rare: a dead end's row goes on from its first templates; redone later
            h.alive = torch.where(h.failed[:, None], c.alive0[h.plan], h.alive)
        if t in prune_after:
            score = (h.logprob - h.penalty).masked_fill(h.failed, float("-inf"))
            rows = _keep_best(score, group, keep)
            h.select(rows)
            token, state = token[rows], tuple(s[:, rows] for s in state)
        if t + 1 < c.steps:
            outputs, state = model(token.view(1, n), state)
            out = outputs[0]
    return [None if h.failed[j] else _poem(c, h, j, seed) for j in range(n)]


def _draw(c: Compiled, h: _Hyps, t: int, logits: torch.Tensor, temperature: float,
          gen: torch.Generator, top_k: int, top_p: float
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step t's characters (n,) sampled within the constraints from `logits` (n, V), and the
    (n, K, V) masks _advance takes where templates disagree about rhyming. A row with nothing
    allowed (a dead end) is marked failed and goes on under the layout alone."""
    allowed, per = _allowed(c, h, t)
    h.failed |= ~any_true(allowed)
    if h.failed.any():
        allowed = torch.where(h.failed[:, None], c.static[h.plan, t], allowed)
    return sample_next(logits, temperature, gen, top_k, top_p, allowed), per


def _take_forced(c: Compiled, h: _Hyps, t: int, char: int, gen: torch.Generator) -> torch.Tensor:
    """Step t's one possible character for every row (n,), as _draw would have drawn it, without
    its (n, V) masks: of those only the column of `char` matters, whether each row's templates
    and --no-repeat allow it."""
    h.failed |= ~_tone_and_repeat_ok(c, h, t, char)
    uniforms(h.failed.size(0), gen, h.failed.device)  # as a draw would: see uniforms
    return torch.full_like(h.tokens[:, t], char)


def _keep_best(score: torch.Tensor, group: int, keep: int) -> torch.Tensor:
    """Rows that replace each group of `group` rows: its `keep` best by `score`, repeated."""
    best = torch.topk(score.view(-1, group), keep, dim=1).indices  # (groups, keep)
    starts = torch.arange(0, score.numel(), group, device=score.device)[:, None]
    return (starts + best)[:, torch.arange(group, device=score.device) % keep].reshape(-1)


def _beam(model, c: Compiled, width: int, seed: int, penalty=(0.0, None)) -> list[Poem]:
    """Beams ranked by the model's log-probability minus the repetition penalties they took."""
    device = model.start_h.device
    out, state = prime_model(model, [], width)
    h = _Hyps(c, width, device)
    h.logprob[1:] = float("-inf")  # all beams start identical: expand only the first
    V = len(c.vocab)
    for t in range(c.steps):
        logp = model.log_probs(out)
        allowed, per = _allowed(c, h, t)
        pen = _repeat_penalty(c, h, t, *penalty)
        pen = torch.zeros_like(logp) if pen is None else pen
        scores = (h.logprob - h.penalty)[:, None] + logp - pen
        top = torch.topk(scores.masked_fill(~allowed, float("-inf")).view(-1), width)
        rows, token = top.indices // V, top.indices % V
        keep = torch.isfinite(top.values)
        if not keep.any():
            raise ConstraintError("beam search ran into a dead end (no allowed character for any "
                                  "beam); sample instead (drop --beam) or relax the constraints")
        rows, token = rows[keep], token[keep]
        taken_logp, taken_pen = logp[rows, token], pen[rows, token]
        h.select(rows)
        per = per[rows] if per is not None else None
        h.logprob = h.logprob + taken_logp
        h.penalty = h.penalty + taken_pen
        _advance(c, h, t, token, per)
        state = tuple(s[:, rows] for s in state)  # every state entry has the batch in dim 1
        if t + 1 < c.steps:
            outputs, state = model(token.view(1, -1), state)
            out = outputs[0]
    order = torch.argsort(h.logprob - h.penalty, descending=True)
    return [_poem(c, h, int(j), seed) for j in order]


def _poem(c: Compiled, h: _Hyps, j: int, seed: int) -> Poem:
    ids = h.tokens[j].tolist()
    text = c.vocab.decode(ids[:-1])  # without the final newline
    # Rows as Python lists first: indexing a tensor element by element cost ~2 ms a best-of-16.
    alive = [k for k, ok in enumerate(h.alive[j].tolist()) if ok]
    tpl = c.templates[alive[0]] if alive and c.templates[alive[0]] is not None else None
    groups = [name for name, ok in zip(c.group_names, h.cand[j].tolist()) if ok]
    return Poem(text, float(h.logprob[j]), len(ids), seed, form=c.spec.form.name,
                repeat_penalty=float(h.penalty[j]),
                plan=c.plan_notes[int(h.plan[j])], template=tpl.name if tpl else None,
                rhyme_group="/".join(groups) if c.spec.rhyme and len(groups) <= 3 else None)


class Stepper:
    """One text written a character at a time, for the REPL's :pick.

    With `compiled`, every choice offered obeys the poem's constraints and forced steps
    (punctuation, fixed characters) are taken automatically; without, it is free text that ends
    at a newline or after `max_chars`.
    """

    def __init__(self, model: CharLSTM, vocab: Vocab, compiled: Compiled | None = None,
                 max_chars: int = 200):
        self.model, self.vocab, self.c, self.max_chars = model, vocab, compiled, max_chars
        device = model.start_h.device
        self.h = _Hyps(compiled, 1, device) if compiled else None
        # Each use of the model is a sampling block of its own (evaluation mode, the reduced
        # copies), not one for the Stepper's life: the user may take minutes between steps.
        with torch.no_grad(), sampling(model):  # as every later step (_step)
            self.out, self.state = prime_model(model, [], 1)
        self.tokens: list[int] = []
        self._undo: list[tuple] = []
        self._written_for_user = ""  # what _skip_forced wrote since the last push
        self._skip_forced()

    @property
    def done(self) -> bool:
        if self.c is not None:
            return len(self.tokens) >= self.c.steps
        return len(self.tokens) >= self.max_chars or (
            bool(self.tokens) and self.tokens[-1] == self.vocab.newline_id)

    @property
    def text(self) -> str:
        return self.vocab.decode(self.tokens).removesuffix(NEWLINE)

    @torch.no_grad()
    def _allowed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.c is None:
            allowed = torch.ones(len(self.vocab), dtype=torch.bool)
            allowed[self.vocab.unk_id] = False
            return allowed, None
        allowed, per = _allowed(self.c, self.h, len(self.tokens))
        return allowed[0], per

    @torch.no_grad()
    def choices(self, k: int = 9, temperature: float = 1.0) -> list[tuple[str, float]]:
        """The k likeliest allowed next characters with their probabilities (after masking)."""
        if self.done:
            return []
        allowed, _ = self._allowed()
        with sampling(self.model):
            logp = self.model.log_probs(self.out)[0]
        logits = with_temperature(logp, temperature)
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, -1)
        top = torch.topk(probs, min(k, int(allowed.sum())))
        return [(self.vocab.chars[i], float(p)) for p, i in zip(top.values, top.indices)]

    @torch.no_grad()
    def push(self, ch: str) -> None:
        """Write `ch` next. What the form just wrote itself (the ，after a line, an acrostic
        head) may be typed too, as someone typing the whole line does: it is taken as already
        written, and so is the punctuation before it (`江` after the form wrote `，江`)."""
        written, k = self._written_for_user, self._written_for_user.find(ch)
        if k >= 0 and not any(is_han(c) for c in written[:k]):
            self._written_for_user = written[k + 1:]
            return
        self._written_for_user = ""
        if self.done:
            raise ConstraintError("the poem is finished")
        allowed, per = self._allowed()
        v = self.vocab.id(ch) if ch in self.vocab else None
        if v is None or not allowed[v]:
            raise ConstraintError(f"{ch!r} is not allowed here" + (
                " (not in the model's vocabulary)" if v is None else " by the form, rhyme or tones"))
        self._undo.append((self.out, self.state, list(self.tokens),
                           None if self.h is None else {k: getattr(self.h, k).clone()
                                                        for k in _Hyps.FIELDS}))
        self._step(v, per)
        self._skip_forced()

    def undo(self) -> bool:
        self._written_for_user = ""
        if not self._undo:
            return False
        self.out, self.state, self.tokens, saved = self._undo.pop()
        if saved is not None:
            for k, v in saved.items():
                setattr(self.h, k, v)
        return True

    @torch.no_grad()
    def finish(self, temperature: float = 0.8, seed: int | None = None) -> str:
        """Let the model write the rest (within the constraints)."""
        gen = torch.Generator(device=self.out.device).manual_seed(new_seed() if seed is None else seed)
        while not self.done:
            allowed, per = self._allowed()
            if not allowed.any():
                raise ConstraintError("no character is allowed here (the choices so far leave "
                                      "none; --no-repeat may have used them up): :undo and choose "
                                      "again")
            with sampling(self.model):
                logp = self.model.log_probs(self.out)
            v = int(sample_next(logp, temperature, gen, allowed=allowed[None]))
            self._step(v, per)
        return self.text

    @torch.no_grad()  # __init__'s forced steps too: no graph, and the same inference path
    def _step(self, v: int, per) -> None:
        token = torch.tensor([v], device=self.out.device)
        if self.c is not None:
            _advance(self.c, self.h, len(self.tokens), token, per)
        self.tokens.append(v)
        with sampling(self.model):
            outputs, self.state = self.model(token.view(1, 1), self.state)
        self.out = outputs[0]

    def _skip_forced(self) -> None:
        """Take steps where only one character is allowed (punctuation, fixed characters)."""
        while self.c is not None and not self.done:
            allowed, per = self._allowed()
            if int(allowed.sum()) != 1:
                return
            v = int(allowed.nonzero()[0])
            self._step(v, per)
            self._written_for_user += self.vocab.chars[v]

"""Tang verse prosody: forms, rhyme groups (平水韵 or 中华新韵) and level/oblique tones (平仄).

Facts, not heuristics, wherever a table exists: 平水韵 comes from the cleaned table shipped in
poetgen/data (see its LICENSE and ../shared/prosody/README.md); modern rhyme and tone come from
pypinyin readings. A character with several readings (多音字) belongs to every group of every
reading, so a poem counts as rhyming when some reading makes it rhyme, as a reader would allow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from poetgen.errors import ConstraintError

PING, ZE = "平", "仄"
COMMA, PERIOD = "，", "。"


# --------------------------------------------------------------------------------------------
# Forms


@dataclass(frozen=True)
class Form:
    name: str  # 五绝 五律 七绝 七律
    chars_per_line: int
    lines: int

    @property
    def code(self) -> str:
        return f"{self.chars_per_line}x{self.lines}"

    def layout(self) -> str:
        """句，句。… with X for each character: the shape every poem of this form has."""
        return "".join("X" * self.chars_per_line + line_end_mark(i) for i in range(self.lines))


def line_end_mark(i: int) -> str:
    """The punctuation after verse line i (from 0): ，ends a couplet's first line, 。its second."""
    return COMMA if i % 2 == 0 else PERIOD


def line_rhymes(i: int, first_line_rhymes: bool) -> bool:
    """Whether verse line i (from 0) ends on a rhyme: every couplet's second line, and the first
    line when the template's first line rhymes (首句入韵)."""
    return i % 2 == 1 or (i == 0 and first_line_rhymes)


FORMS = {f.name: f for f in (Form("五绝", 5, 4), Form("五律", 5, 8), Form("七绝", 7, 4), Form("七律", 7, 8))}
_ALIASES = {f.code: f for f in FORMS.values()} | {"wujue": FORMS["五绝"], "wulv": FORMS["五律"],
                                                  "qijue": FORMS["七绝"], "qilv": FORMS["七律"],
                                                  "五言绝句": FORMS["五绝"], "五言律诗": FORMS["五律"],
                                                  "七言绝句": FORMS["七绝"], "七言律诗": FORMS["七律"]}


def get_form(name: str) -> Form:
    form = FORMS.get(name) or _ALIASES.get(name.strip().lower().replace("×", "x"))
    if form is None:
        raise ConstraintError(f"unknown form {name!r}; use one of 五绝 五律 七绝 七律 "
                              "(or 5x4 5x8 7x4 7x8)")
    return form


# --------------------------------------------------------------------------------------------
# Tonal templates
#
# Four five-character line types; seven-character lines put two characters of the opposite
# tone in front. A quatrain uses one of four sequences (adhesion 粘 and opposition 对 fix the rest
# once line 1 is chosen); a regulated verse repeats the quatrain, its line 5 never rhyming.

_LINE_TYPES_5 = {"A": "仄仄平平仄", "B": "平平仄仄平", "C": "平平平仄仄", "D": "仄仄仄平平"}
_QUATRAINS = {  # name: line types; names use the five-character convention (平起/仄起 = 2nd char)
    "仄起首句不入韵": "ABCD",
    "仄起首句入韵": "DBCD",
    "平起首句不入韵": "CDAB",
    "平起首句入韵": "BDAB",
}


def _line_pattern(kind: str, chars: int) -> str:
    base = _LINE_TYPES_5[kind]
    if chars == 7:
        head = ZE if base[0] == PING else PING
        return head * 2 + base
    return base


@dataclass(frozen=True)
class Template:
    name: str
    line_types: str  # e.g. "ABCDABCD"
    lines: tuple[str, ...]  # 平/仄 per position, per line

    @property
    def first_line_rhymes(self) -> bool:
        return self.lines[0][-1] == PING


def templates(form: Form) -> list[Template]:
    out = []
    for name, types in _QUATRAINS.items():
        if form.lines == 8:  # line 5 restarts the quatrain but without a rhyme: A or C
            types = types + {"D": "A", "B": "C"}.get(types[0], types[0]) + types[1:]
        if form.chars_per_line == 7:  # the prefix flips 平起 and 仄起
            name = name.replace("平起", "X").replace("仄起", "平起").replace("X", "仄起")
        out.append(Template(name, types, tuple(_line_pattern(t, form.chars_per_line) for t in types)))
    return out


def free_positions(chars_per_line: int, line_type: str, mode: str) -> set[int]:
    """0-based positions whose tone is free in `mode`.

    loose = 一三五不论 (five-character lines: 一三不论), but never at the cost of 孤平 (a B line
    平平仄仄平 must keep its first 平) or 三平尾 (a D line 仄仄仄平平 keeps its third 仄).
    strict = every position as the template says.
    """
    if mode != "loose":
        return set()
    free = {0, 2, 4} if chars_per_line == 7 else {0, 2}
    offset = chars_per_line - 5
    if line_type == "B":
        free.discard(offset)  # 孤平
    if line_type == "D":
        free.discard(offset + 2)  # 三平尾
    return free


# --------------------------------------------------------------------------------------------
# Rhyme schemes


class RhymeScheme:
    """Rhyme groups and tone classes of characters under one scheme."""

    name: str
    group_names: list[str]
    level_groups: set[str]  # groups that rhyme in level tone (all of them for modern rhyme)

    def groups(self, ch: str) -> tuple[str, ...]:
        raise NotImplementedError

    def tone(self, ch: str) -> str | None:
        """平, 仄, 'both' (readings of both kinds), or None (unknown character)."""
        raise NotImplementedError

    def resolve_group(self, spec: str) -> set[str]:
        """A group name, or a character whose groups to use -> set of group names."""
        spec = spec.strip()
        if spec in self.group_names:
            return {spec}
        matches = [g for g in self.group_names if g.endswith(spec) or g.replace("声", "聲") == spec]
        if len(matches) == 1:
            return set(matches)
        if len(spec) == 1 and self.groups(spec):
            return set(self.groups(spec))
        raise ConstraintError(f"unknown rhyme group {spec!r} for {self.name}; give a group name "
                              f"(e.g. {self.group_names[len(self.group_names) // 2]}) or one "
                              "character that rhymes as you want")


class Pingshui(RhymeScheme):
    name = "pingshui"

    def __init__(self):
        data = json.loads(resources.files("poetgen").joinpath("data/pingshui.json").read_text("utf-8"))
        self.index: dict[str, list[str]] = data["simplified_index"]
        self.group_names = [g["id"] for g in data["groups"]]
        self.level = {g["id"]: g["level"] for g in data["groups"]}
        self.level_groups = {g for g, lv in self.level.items() if lv == PING}

    def groups(self, ch: str) -> tuple[str, ...]:
        return tuple(self.index.get(ch, ()))

    def tone(self, ch: str) -> str | None:
        gs = self.index.get(ch)
        if not gs:
            return None
        levels = {self.level[g] for g in gs}
        return levels.pop() if len(levels) == 1 else "both"


# 中华新韵 (十四韵) by pinyin final; zhi chi shi ri zi ci si have the final -i of 支.
_MODERN = {
    "一麻": "a ia ua", "二波": "o e uo", "三皆": "ie ve", "四开": "ai uai", "五微": "ei uei ui",
    "六豪": "ao iao", "七尤": "ou iou iu", "八寒": "an ian uan van", "九文": "en in uen un vn",
    "十唐": "ang iang uang", "十一庚": "eng ing ong iong", "十二齐": "i er v", "十三支": "-i",
    "十四姑": "u",
}
_FINAL_TO_MODERN = {f: g for g, finals in _MODERN.items() for f in finals.split()}
_INITIALS = sorted("b p m f d t n l g k h j q x zh ch sh r z c s y w".split(), key=len, reverse=True)


class Modern(RhymeScheme):
    name = "modern"
    group_names = list(_MODERN)
    level_groups = set(_MODERN)

    def __init__(self):
        self._cache: dict[str, tuple[tuple[str, ...], str | None]] = {}

    def _lookup(self, ch: str):
        if ch not in self._cache:
            from pypinyin import Style, pinyin

            groups, tones = [], set()
            if _is_han(ch):
                found = pinyin(ch, style=Style.TONE3, heteronym=True, strict=True,
                               neutral_tone_with_five=True, errors="ignore")
                readings = found[0] if found else []
                for r in readings:
                    if not r or not r[-1].isdigit():
                        continue
                    g = _modern_group(r[:-1])
                    if g and g not in groups:
                        groups.append(g)
                    if r[-1] in "12":
                        tones.add(PING)
                    elif r[-1] in "34":
                        tones.add(ZE)
            tone = None if not tones else tones.pop() if len(tones) == 1 else "both"
            self._cache[ch] = (tuple(groups), tone)
        return self._cache[ch]

    def groups(self, ch: str) -> tuple[str, ...]:
        return self._lookup(ch)[0]

    def tone(self, ch: str) -> str | None:
        return self._lookup(ch)[1]


def _modern_group(syllable: str) -> str | None:
    s = syllable.replace("ü", "v")
    initial = next((i for i in _INITIALS if s.startswith(i) and len(s) > len(i)), "")
    final = s[len(initial):]
    if initial in ("zh", "ch", "sh", "r", "z", "c", "s") and final == "i":
        return "十三支"
    if initial == "y":  # yi ya ye yao you yan yin yang ying yong yu yue yuan yun
        final = {"i": "i", "in": "in", "ing": "ing", "u": "v", "ue": "ve", "uan": "van",
                 "un": "vn"}.get(final, "i" + final if final else "i")
    elif initial == "w":  # wu wa wo wai wei wan wen wang weng
        final = "u" if final == "u" else "u" + final
    elif initial in ("j", "q", "x") and final.startswith("u"):
        final = "v" + final[1:]
    return _FINAL_TO_MODERN.get(final)


@cache
def scheme(name: str) -> RhymeScheme:
    if name == "pingshui":
        return Pingshui()
    if name == "modern":
        return Modern()
    raise ConstraintError(f"unknown rhyme scheme {name!r}; use pingshui or modern")


# --------------------------------------------------------------------------------------------
# Text helpers

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")


def _is_han(ch: str) -> bool:
    return bool(_HAN.fullmatch(ch))


def is_han(ch: str) -> bool:
    """A CJK unified (or compatibility) ideograph."""
    return _is_han(ch)


def han_only(text: str) -> str:
    """Keep only Han characters: heads like '春，江？花 月' -> '春江花月'."""
    return "".join(c for c in text if _is_han(c))


def split_verse(poem: str) -> list[str]:
    """Verse lines of a poem: text between punctuation marks, with whitespace dropped."""
    parts = re.split(r"[，。？！；、,.?!;:：\s]+", poem.strip())
    return [p for p in parts if p]


def split_keywords(text: str) -> list[str]:
    """'春,雨,江', '春 雨 江' or '春，明月' -> ['春', '雨', '江'] / ['春', '明月']: keywords of one or
    two Chinese characters. Raises ValueError naming the first that is not."""
    words = [w for w in re.split(r"[,，、;；/\s]+", text.strip()) if w]
    for w in words:
        if len(w) > 2 or not all(_is_han(c) for c in w):
            raise ValueError(w)
    return words

"""Tang verse prosody: forms, rhyme groups (平水韵 or 中华新韵), level/oblique tones (平仄) and
the readings behind them, written once for the generator, the checker and the corpus tools.

Facts, not heuristics, wherever a table exists: 平水韵 comes from the cleaned table shipped in
poetgen/data (see its LICENSE and ../shared/prosody/README.md); modern rhyme and tone come from
pypinyin readings. A character with several readings (多音字) has every reading the tables give,
but they are not equal: poetgen/data/readings.json (built by tools/build_readings.py from the
training corpus) says which readings Tang poets really used. `scheme(name, "common")` keeps only
those, which is what generation uses; `scheme(name, "all")` keeps every reading, which the
checker uses while warning about a rare one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from poetgen.errors import ConfigError, ConstraintError

PING, ZE = "平", "仄"
COMMA, PERIOD = "，", "。"

# The values of the poem settings every front end offers and the checker and decoder accept
# (settings.py, `check`'s options), declared here once.
RHYME_SCHEMES = ("pingshui", "modern")  # 平水韵, 中华新韵
# 平仄: loose frees positions 1, 3 (, 5) but avoids 孤平 and 三平尾; strict follows the
# template everywhere; off ignores tones.
TONE_MODES = ("loose", "strict", "off")
# Which readings of a character count: "common" = only those well attested in Tang regular verse
# (the derived table's common readings), "all" = every reading the rhyme table or pypinyin gives.
READINGS = ("common", "all")


def one_of(values: tuple[str, ...]) -> str:
    """'a, b or c' of the values (empty ones left out)."""
    values = tuple(v for v in values if v)
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """ConfigError unless `value` is one of `allowed` (a Python caller's typo; the front ends
    offer only these)."""
    if value not in allowed:
        raise ConfigError(f"{name} must be {one_of(allowed)}, not {value!r}")


# --------------------------------------------------------------------------------------------
# Forms and layout


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


def detect_form(lines: list[str]) -> Form | None:
    """The Tang form of these verse lines (4 or 8 lines, all of 5 or all of 7 characters), or None."""
    lengths = {len(x) for x in lines}
    if len(lengths) == 1 and len(lines) in (4, 8):
        n = lengths.pop()
        for f in FORMS.values():
            if f.chars_per_line == n and f.lines == len(lines):
                return f
    return None


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


@dataclass(frozen=True)
class LineShape:
    """One accepted (or tolerated) tone shape of a line type: 平/仄 per position, '*' where free.

    kind: "regular" (the template), "孤平拗救", "对句相救" (needs 平 at `rescue_at` of the next
    line), "救对句" (a B line whose 平 at `rescue_at` rescues the line before; strict mode only:
    loose mode leaves that position free anyway), "特定格式" (平平仄平仄), or "拗" (tolerated but
    outside 王力's forms: a warning). Positions are 0-based.
    """

    kind: str
    pattern: str
    rescue_at: int | None = None


def line_shapes(chars_per_line: int, line_type: str, mode: str) -> list[LineShape]:
    """Every shape a line of this type may take in `mode` (loose or strict), the template first.

    The variants are those of 王力《诗词格律》 (第二章 近体诗, §拗救 and §特定格式): 孤平拗救
    (五言 仄平平仄平, 七言 仄仄仄平平仄平), 对句相救 (the 出句 仄仄平平仄 with 仄 at position 4,
    or at 3 and 4, rescued by 平 at position 3 of the 对句; 七言 positions 6, 5-6 and 5), and the
    special form 平平仄平仄 in place of 平平平仄仄 when its first character is 平 (七言
    仄仄平平仄平仄, third character 平); with a 仄 first character it is a tolerated 拗.
    """
    n, offset = chars_per_line, chars_per_line - 5
    strict = _line_pattern(line_type, n)
    free = free_positions(n, line_type, mode)
    regular = "".join("*" if j in free else strict[j] for j in range(n))
    head = regular[:offset]  # 七言: the two-character prefix, its first character free in loose mode

    def five(p: str) -> str:  # a five-character variant, its head as the regular line's
        return head + p if mode == "loose" else strict[:offset] + p.replace("*", "")

    shapes = [LineShape("regular", regular)]
    if line_type == "A":  # 仄仄平平仄 -> 仄仄平仄仄 / 仄仄仄仄仄, the 对句 has 平 at position 3
        for p in (("*仄*仄仄",) if mode == "loose" else ("仄仄平仄仄", "仄仄仄仄仄")):
            shapes.append(LineShape("对句相救", five(p), rescue_at=offset + 2))
    elif line_type == "B":  # 平平仄仄平 -> 仄平平仄平 (孤平拗救); 平平平仄平 rescues the 出句
        shapes.append(LineShape("孤平拗救", five("仄平平仄平")))
        if mode != "loose":
            shapes.append(LineShape("救对句", five("平平平仄平"), rescue_at=offset + 2))
    elif line_type == "C":  # 平平平仄仄 -> 平平仄平仄 (first character 平), else a tolerated 拗
        shapes.append(LineShape("特定格式", five("平平仄平仄")))
        shapes.append(LineShape("拗", five("仄平仄平仄")))
    return shapes


# --------------------------------------------------------------------------------------------
# Neighbouring rhyme groups (邻韵), for 首句借邻韵
#
# 王力《汉语诗律学》(第一章 §7) and 《诗词格律》 allow the first line of a regulated poem to end in
# a group next to the poem's own (首句借邻韵). Which groups are neighbours follows 戈载《词林正韵》
# (1821), which merges the level groups of 平水韵 into 14 部; groups it splits between two 部
# (上平九佳, 上平十灰, 上平十三元) are taken whole in each. 五歌, 十一尤 and 十二侵 stand alone.
_NEIGHBOUR_SETS = [
    "上平一东 上平二冬",
    "上平三江 下平七阳",
    "上平四支 上平五微 上平八齐 上平十灰",
    "上平六鱼 上平七虞",
    "上平九佳 上平十灰",
    "上平十一真 上平十二文 上平十三元",
    "上平十三元 上平十四寒 上平十五删 下平一先",
    "下平二萧 下平三肴 下平四豪",
    "上平九佳 下平六麻",
    "下平八庚 下平九青 下平十蒸",
    "下平十三覃 下平十四盐 下平十五咸",
]
NEIGHBOURS: dict[str, frozenset[str]] = {}
for _names in _NEIGHBOUR_SETS:
    for _g in _names.split():
        NEIGHBOURS[_g] = NEIGHBOURS.get(_g, frozenset()) | (frozenset(_names.split()) - {_g})


# --------------------------------------------------------------------------------------------
# Readings


@dataclass(frozen=True)
class Reading:
    """One reading of a character under a rhyme scheme."""

    label: str  # 平水韵: the group ('上平一东'); modern: pinyin with tone number ('zhong1')
    tone: str | None  # 平 or 仄 (None: a neutral tone, which has neither)
    group: str | None  # rhyme group (None: no group known)
    common: bool  # well attested in Tang verse (modern, read in context: the reading used there)


@cache
def derived_readings() -> dict:
    """poetgen/data/readings.json: readings weighted by use (see tools/build_readings.py)."""
    return json.loads(resources.files("poetgen").joinpath("data/readings.json").read_text("utf-8"))


# --------------------------------------------------------------------------------------------
# Rhyme schemes


class RhymeScheme:
    """Rhyme groups and tone classes of characters under one scheme, with `readings` ("common" or
    "all") deciding which readings `groups` and `tone` see."""

    name: str
    group_names: list[str]
    level_groups: set[str]  # groups that rhyme in level tone (all of them for modern rhyme)
    mode: str = "all"
    # Whether readings_in_context reads a 多音字 by its neighbours, so that which of its readings
    # counts is known only once its line is written (modern: pypinyin's phrase data).
    reads_in_context: bool = False

    def readings(self, ch: str) -> tuple[Reading, ...]:
        """Every reading of `ch`, each marked common or not."""
        raise NotImplementedError

    def readings_in_context(self, line: str) -> list[tuple[Reading, ...]]:
        """Readings of each character of a verse line; a scheme that can read the line in context
        marks the reading used there as the common one."""
        return [self.readings(c) for c in line]

    def usage(self, ch: str) -> str:
        """How Tang verse used `ch` (for messages about a rare reading), or '' if unknown."""
        return ""

    def _used(self, ch: str) -> tuple[Reading, ...]:
        rs = self.readings(ch)
        if self.mode == "common":
            return tuple(r for r in rs if r.common) or rs
        return rs

    def groups(self, ch: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.group for r in self._used(ch) if r.group))

    def tone(self, ch: str) -> str | None:
        """平, 仄, 'both' (readings of both kinds), or None (unknown character)."""
        tones = {r.tone for r in self._used(ch) if r.tone}
        return None if not tones else tones.pop() if len(tones) == 1 else "both"

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
                              f"(e.g. {self.group_names[0]}) or one "
                              "character that rhymes as you want")


class Pingshui(RhymeScheme):
    name = "pingshui"

    def __init__(self, mode: str = "all"):
        data = json.loads(resources.files("poetgen").joinpath("data/pingshui.json").read_text("utf-8"))
        self.mode = mode
        self.index: dict[str, list[str]] = data["simplified_index"]
        self.group_names = [g["id"] for g in data["groups"]]
        self.level = {g["id"]: g["level"] for g in data["groups"]}
        self.level_groups = {g for g, lv in self.level.items() if lv == PING}
        self.derived: dict[str, dict] = derived_readings()["pingshui"]
        self._cache: dict[str, tuple[Reading, ...]] = {}

    def readings(self, ch: str) -> tuple[Reading, ...]:
        if ch not in self._cache:
            groups = self.index.get(ch, ())
            common = set(self.derived[ch]["common"]) if ch in self.derived else set(groups)
            self._cache[ch] = tuple(Reading(g, self.level[g], g, g in common) for g in groups)
        return self._cache[ch]

    def usage(self, ch: str) -> str:
        entry = self.derived.get(ch)
        if not entry:
            return ""
        uses = entry["uses"]
        tones = ", ".join(f"{t} {uses[t]}" for t in (PING, ZE) if uses.get(t))
        rhymes = ", ".join(f"{g} {n}" for g, n in uses.items() if g not in (PING, ZE))
        return f"Tang regular verse uses it as {tones}" + (f"; it rhymes in {rhymes}" if rhymes else "")


# 中华新韵 (十四韵) by pinyin final; zhi chi shi ri zi ci si have the final -i of 支. Finals the
# table leaves out are put where they sound: ueng/uong (翁) with eng in 十一庚 (as 中华新韵 does),
# io (哟) with o, ê (欸) with ie/üe, and the syllabic nasals with the nasal finals they end in.
_MODERN = {
    "一麻": "a ia ua", "二波": "o e uo io", "三皆": "ie ve ê", "四开": "ai uai",
    "五微": "ei uei ui", "六豪": "ao iao", "七尤": "ou iou iu", "八寒": "an ian uan van",
    "九文": "en in uen un vn n m hm", "十唐": "ang iang uang",
    "十一庚": "eng ing ong iong ueng uong ng hng", "十二齐": "i er v", "十三支": "-i",
    "十四姑": "u",
}
_FINAL_TO_MODERN = {f: g for g, finals in _MODERN.items() for f in finals.split()}
_INITIALS = sorted("b p m f d t n l g k h j q x zh ch sh r z c s y w".split(), key=len, reverse=True)
# pypinyin lists tone-sandhi forms of 一 and 不 as readings; a poem's tone is the citation tone.
_SANDHI = {"一": {"yi2", "yi4"}, "不": {"bu2"}}
_CITATION = {"一": "yi1", "不": "bu4"}


def citation_reading(ch: str, syllable: str) -> str:
    """The reading with its citation tone: pypinyin's phrase data writes 不是 bu2 shi4 (sandhi)."""
    return _CITATION[ch] if syllable in _SANDHI.get(ch, ()) else syllable


def _tone_of_number(digit: str) -> str | None:
    return PING if digit in "12" else ZE if digit in "34" else None


class Modern(RhymeScheme):
    name = "modern"
    group_names = list(_MODERN)
    level_groups = set(_MODERN)
    reads_in_context = True

    def __init__(self, mode: str = "all"):
        self.mode = mode
        self.derived: dict[str, dict] = derived_readings()["modern"]
        self._cache: dict[str, tuple[Reading, ...]] = {}

    def readings(self, ch: str) -> tuple[Reading, ...]:
        if ch not in self._cache:
            from pypinyin import Style, pinyin

            out: list[Reading] = []
            if _is_han(ch):
                found = pinyin(ch, style=Style.TONE3, heteronym=True, strict=True,
                               neutral_tone_with_five=True, errors="ignore")
                syllables = [r for r in (found[0] if found else []) if r and r[-1].isdigit()
                             and r not in _SANDHI.get(ch, ())]
                if ch in self.derived:
                    common = set(self.derived[ch]["common"])
                else:  # no evidence from Tang verse: pypinyin's first reading is the usual one
                    common = set(syllables[:1])
                out = [Reading(s, _tone_of_number(s[-1]), _modern_group(s[:-1]), s in common)
                       for s in syllables]
            self._cache[ch] = tuple(out)
        return self._cache[ch]

    def readings_in_context(self, line: str) -> list[tuple[Reading, ...]]:
        """The reading pypinyin's phrase data gives each character in this line is the common one;
        the character's other readings are rare here. 一 and 不 keep their citation tones."""
        if not line or not all(_is_han(c) for c in line):
            return super().readings_in_context(line)
        from pypinyin import Style, pinyin

        said = [r[0] for r in pinyin(line, style=Style.TONE3, neutral_tone_with_five=True)]
        out = []
        for ch, syl in zip(line, said):
            syl = citation_reading(ch, syl)
            others = tuple(Reading(r.label, r.tone, r.group, False) for r in self.readings(ch)
                           if r.label != syl)
            used = Reading(syl, _tone_of_number(syl[-1]), _modern_group(syl[:-1]), True)
            out.append((used,) + others)
        return out

    def usage(self, ch: str) -> str:
        entry = self.derived.get(ch)
        if not entry:
            return ""
        return "Tang verse, read in context, has " + ", ".join(f"{s} {n}" for s, n in entry["uses"].items())


def _modern_group(syllable: str) -> str | None:
    s = syllable.replace("ü", "v")
    if s in ("m", "n", "ng", "hm", "hng"):  # syllabic nasals: no initial to strip
        return _FINAL_TO_MODERN[s]
    initial = next((i for i in _INITIALS if s.startswith(i) and len(s) > len(i)), "")
    final = s[len(initial):]
    if initial in ("zh", "ch", "sh", "r", "z", "c", "s") and final == "i":
        return "十三支"
    if initial == "y":  # yi ya ye yao you yan yin yang ying yong yu yue yuan yun yo
        final = {"i": "i", "in": "in", "ing": "ing", "u": "v", "ue": "ve", "uan": "van",
                 "un": "vn"}.get(final, "i" + final if final else "i")
    elif initial == "w":  # wu wa wo wai wei wan wen wang weng wong
        final = "u" if final == "u" else "u" + final
    elif initial in ("j", "q", "x") and final.startswith("u"):
        final = "v" + final[1:]
    return _FINAL_TO_MODERN.get(final)


@cache
def scheme(name: str, readings: str = "all") -> RhymeScheme:
    """The rhyme scheme `name` (pingshui | modern), seeing `readings` (common | all)."""
    check_choice("readings", readings, READINGS)
    check_choice("the rhyme scheme", name, RHYME_SCHEMES)
    return Pingshui(readings) if name == "pingshui" else Modern(readings)


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

"""The checker on poems whose rhyme groups and patterns are well known."""

import json

import pytest
from click.testing import CliRunner

from poetgen.verse.check import check_poem, distinct_n
from poetgen.app.cli import cli
from poetgen.verse.prosody import FORMS, get_form, scheme, templates

静夜思 = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
登鹳雀楼 = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
春望 = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"
黄鹤楼 = ("昔人已乘黄鹤去，此地空余黄鹤楼。黄鹤一去不复返，白云千载空悠悠。"
         "晴川历历汉阳树，芳草萋萋鹦鹉洲。日暮乡关何处是，烟波江上使人愁。")
早发白帝城 = "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。"


@pytest.mark.parametrize("poem, form, group, modern", [
    (静夜思, "五绝", "下平七阳", "十唐"),
    (登鹳雀楼, "五绝", "下平十一尤", "七尤"),
    (春望, "五律", "下平十二侵", None),  # 簪 zan no longer rhymes with 深心金 in Mandarin
    (黄鹤楼, "七律", "下平十一尤", "七尤"),
    (早发白帝城, "七绝", "上平十五删", "八寒"),
])
def test_known_poems_rhyme_groups(poem, form, group, modern):
    r = check_poem(poem)
    assert r.form == form and r.rhyme_group == group and r.rhyme_ok
    m = check_poem(poem, rhyme="modern")
    assert m.rhyme_ok == (modern is not None)
    if modern:
        assert m.rhyme_group == modern


def test_known_tonal_patterns():
    r = check_poem(登鹳雀楼)
    assert r.ok and r.template == "仄起首句不入韵"  # 仄仄平平仄，平平仄仄平。…
    strict = check_poem(登鹳雀楼, tones="strict")  # 欲穷千里目 is 仄平平仄仄: 一三不论 allows it
    assert strict.violations == ["line 3, character 1 '欲' is 仄, the template needs 平"]
    r = check_poem(早发白帝城)
    assert r.template == "平起首句入韵" and r.tone_violations == 0  # line 1 rhymes: 间 还 山
    # 黄鹤楼 famously breaks the rules in its first half (三平调 悠悠, 黄鹤 repeated)
    assert check_poem(黄鹤楼).tone_violations >= 2
    # 静夜思 is an old-style quatrain: it rhymes but does not follow a template
    assert not check_poem(静夜思).ok and check_poem(静夜思).rhyme_ok


def test_violations_are_named():
    bad = check_poem("白日依山尽，黄河入海流。欲穷千里目，更上一层天。")
    assert any("'天'" in v and "does not rhyme" in v for v in bad.violations)
    half = check_poem("白日依山尽，黄河入海流。")
    assert "wrong length: 2 lines of 5+5 characters" in half.violations[0]
    # It said "0 lines of nothing characters".
    assert "wrong length: no verse line;" in check_poem("，，，，").violations[0]
    gu = check_poem("白日依山尽，落河入海流。欲穷千里目，更上一层楼。", tones="loose")
    assert gu.violations == ["line 2, character 1 '落': 孤平 — with '落' 仄, only '河' is 平 among characters "
                             "1–4 (落河入海) besides the rhyme, and character 3 '入' is not 平 to rescue it "
                             "(孤平拗救)"]
    san = check_poem("白日依山尽，黄河入海流。欲穷千里目，更上千层楼。", tones="loose")
    assert san.violations == ["line 4, character 3 '千': 三平尾 — the line ends in three 平 (千层楼)"]


def test_templates_follow_adhesion_and_opposition():
    for form in FORMS.values():
        for tpl in templates(form):
            lines = tpl.lines
            assert len(lines) == form.lines and all(len(x) == form.chars_per_line for x in lines)
            for i in range(0, form.lines, 2):  # 对: second character of a couplet is opposite
                assert lines[i][1] != lines[i + 1][1]
            for i in range(1, form.lines - 1, 2):  # 粘: line 2k+1 shares it with line 2k
                assert lines[i][1] == lines[i + 1][1]
            assert all(lines[i][-1] == "平" for i in range(1, form.lines, 2))
    assert get_form("7x4") == get_form("七言绝句") == FORMS["七绝"]


def test_pingshui_table_loads_with_known_entries():
    ps = scheme("pingshui")
    assert len(ps.group_names) == 106 and len(ps.level_groups) == 30
    assert ps.groups("东") == ("上平一东",)
    assert set(ps.groups("为")) == {"上平四支", "去声四寘"}  # 多音字: both readings
    assert ps.tone("月") == "仄" and ps.tone("看") == "both" and ps.tone("A") is None


def test_distinct_n():
    assert distinct_n(["春江春江，春江。"], 1) == pytest.approx(2 / 6)
    assert distinct_n([], 2) == 0


def test_check_cli_text_file_and_json(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["check", 登鹳雀楼])
    assert r.exit_code == 0 and "下平十一尤" in r.stdout and "no violations" in r.stdout
    f = tmp_path / "poems.txt"
    f.write_text(登鹳雀楼 + "\n" + 静夜思 + "\n", encoding="utf-8")
    r = runner.invoke(cli, ["check", str(f), "--json"])
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 1 and [row["ok"] for row in rows] == [True, False]
    assert rows[0]["lines"][1][4] == {"char": "流", "pinyin": "liú", "tone": "平", "groups": ["下平十一尤"],
                                      "rhyme": True, "required": "平", "ok": True,
                                      "reading": "下平十一尤", "rare": False}
    assert [row["verdict"] for row in rows] == ["近体", "古体"] and rows[1]["reasons"]

"""Readings weighted by use (poetgen/data/readings.json and the tool that builds it), the modern
scheme's finals and context readings, and the rules written once in prosody."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED
from gold_poems import RARE_RHYME
from poetgen.app.cli import cli
from poetgen.errors import ConfigError, ConstraintError
from poetgen.lm.corpus import Vocab
from poetgen.verse.check import check_poem
from poetgen.verse.constrain import PoemSpec, compile_spec
from poetgen.verse.corpus_tools import regular_form
from poetgen.verse.prosody import (FORMS, derived_readings, detect_form, line_end_mark, line_rhymes, scheme,
                                   split_verse)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_readings  # noqa: E402


# ----------------------------------------------------------------------------- the shipped table


def test_the_shipped_table_says_which_readings_tang_poets_used():
    ps_all, ps = scheme("pingshui", "all"), scheme("pingshui", "common")
    assert ps_all.tone("空") == "both" and ps.tone("空") == "平"  # 白云千载空悠悠 is 三平尾
    assert set(ps_all.groups("逢")) == {"上平一东", "上平二冬", "上平三江"} and ps.groups("逢") == ("上平二冬",)
    assert ps.tone("中") == "平" and ps.tone("看") == "both" and ps.tone("过") == "both"  # both really used
    assert ps.tone("东") == "平" and ps.groups("东") == ("上平一东",)  # one reading: nothing to choose
    entry = derived_readings()["pingshui"]["逢"]
    assert entry["primary"] == "上平二冬" and entry["uses"]["上平二冬"] > 10 * entry["uses"].get("上平一东", 0)


def test_the_table_records_its_provenance_and_never_saw_validation():
    prov = derived_readings()["provenance"]
    assert prov["corpus"] == "tang_train.txt" and "val" not in prov["command"]
    assert prov["built_by"] == "tools/build_readings.py" and len(prov["corpus_sha256"]) == 64
    assert prov["pingshui_sha256"] == hashlib.sha256((ROOT / "poetgen/data/pingshui.json").read_bytes()).hexdigest()


@pytest.mark.skipif(not (SHARED / "corpora" / "tang_train.txt").exists(),
                    reason="needs ../shared/corpora/tang_train.txt")
def test_the_table_was_built_from_the_shared_training_corpus():
    raw = (SHARED / "corpora" / "tang_train.txt").read_bytes()
    assert derived_readings()["provenance"]["corpus_sha256"] == hashlib.sha256(raw).hexdigest()


def test_the_builder_counts_rhymes_and_template_positions():
    ps = json.loads((ROOT / "poetgen/data/pingshui.json").read_text("utf-8"))
    level = {g["id"]: g["level"] for g in ps["groups"]}
    index = ps["simplified_index"]
    # 逢 rhymes with 浓/容/峰 (二冬) six times and once with 东/风/红 (一东)
    poems = ["白日依山尽，黄河入海浓。欲穷千里目，更上一层逢。"] * 3 + \
            ["白日依山尽，黄河入海容。欲穷千里目，更上一层逢。"] * 3 + \
            ["白日依山尽，黄河入海风。欲穷千里目，更上一层逢。"]
    table, stats = build_readings.pingshui_usage(poems, index, level)
    assert stats["rhyme_poems"] == 7  # each poem's two rhymes share exactly one group
    assert table["逢"]["uses"] == {"平": 7, "上平二冬": 6, "上平一东": 1}
    assert table["逢"]["common"] == ["上平二冬"]  # one use in seven: rare
    # 看 at character 2 of 平平 positions (template positions) only: its 仄 reading is unattested
    poems = ["白日依山尽，黄河入海流。欲看千里目，更上一层楼。"] * 6
    table, stats = build_readings.pingshui_usage(poems, index, level)
    assert stats["template_poems"] == 6 and table["看"]["uses"] == {"平": 6}
    assert table["看"]["common"] == ["上平十四寒"]
    with pytest.raises(SystemExit):
        build_readings.main([str(SHARED / "corpora" / "tang_val.txt"), "-o", "/dev/null"])


# ----------------------------------------------------------------------------- generation


def test_generation_uses_only_common_readings_unless_told_otherwise():
    vocab = Vocab.build("空东白云千载悠逢风红中人，。\n")
    common = compile_spec(PoemSpec.make("五绝"), vocab)
    lenient = compile_spec(PoemSpec.make("五绝", readings="all"), vocab)
    kong, feng = vocab.id("空"), vocab.id("逢")
    assert PoemSpec.make("五绝").readings == "common"
    assert bool(common.tone_ok[0, kong]) and not bool(common.tone_ok[1, kong])  # 空 only 平
    assert bool(lenient.tone_ok[1, kong])
    dong = common.group_names.index("上平一东")
    assert not bool(common.member[feng, dong]) and bool(lenient.member[feng, dong])
    with pytest.raises(ConfigError, match="readings must be common or all"):
        compile_spec(PoemSpec.make("五绝", readings="some"), vocab)


def test_generation_never_rhymes_a_character_twice():
    # 灯 is the vocabulary's only 十蒸 character: a 五绝 has at least two rhymes
    vocab = Vocab.build("灯春江花月夜山水风云雨天人心秋声明光长空日落红南北东西来去不知何处归，。\n")
    with pytest.raises(ConstraintError, match="fewer characters in the model's vocabulary than the poem's"):
        compile_spec(PoemSpec.make("五绝", rhyme_group="下平十蒸", pattern="????灯"), vocab)
    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    assert not bool(compiled.cand0[0, compiled.group_names.index("下平十蒸")])
    assert bool(compiled.cand0[0, compiled.group_names.index("上平一东")])


# ----------------------------------------------------------------------------- modern rhyme


def test_every_pypinyin_final_has_a_modern_group():
    from pypinyin import Style, pinyin
    from pypinyin.constants import PINYIN_DICT

    from poetgen.verse.prosody import _modern_group

    missing = {r[:-1] for cp in PINYIN_DICT for r in pinyin(chr(cp), style=Style.TONE3, heteronym=True,
                                                               neutral_tone_with_five=True)[0]
               if _modern_group(r[:-1]) is None}
    assert missing == set()
    assert _modern_group("weng") == _modern_group("feng") == "十一庚"


def test_shi_er_ends_in_weng_and_rhymes_in_modern():
    r = check_poem("死去元知万事空，但悲不见九州同。王师北定中原日，家祭无忘告乃翁。", rhyme="modern")
    assert r.ok and r.rhyme_group == "十一庚" and r.lines[3][6].reading == "weng1"


def test_modern_tones_come_from_the_reading_in_context():
    m, mc = scheme("modern", "all"), scheme("modern", "common")
    assert m.tone("一") == "平" and mc.tone("一") == "平"  # yī: sandhi yí/yì is no reading of its own
    assert mc.tone("不") == "仄"  # bù; pypinyin's 不是 bu2 is sandhi
    assert "八寒" in m.groups("石") and mc.groups("石") == ("十三支",)  # dàn is rare
    assert "十四姑" in m.groups("月") and mc.groups("月") == ("三皆",)  # ru4 is rare
    line = m.readings_in_context("长安一片月")
    assert [r[0].label for r in line] == ["chang2", "an1", "yi1", "pian4", "yue4"]
    assert all(r[0].common and not any(o.common for o in r[1:]) for r in line)


def test_a_modern_reading_other_than_the_one_in_context_is_a_warning():
    # pypinyin reads 还 hái in 千里江陵一日还; the rhyme with 间/山 needs huán
    r = check_poem("朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。", rhyme="modern")
    assert r.ok and r.rhyme_group == "八寒"
    assert any("'还'" in w and "huan2" in w and "pypinyin reads it hai2 in this line" in w for w in r.warnings)
    assert check_poem(r.text, rhyme="modern", readings="common").verdict == "出韵"


# ----------------------------------------------------------------------------- rules written once


def test_layout_rhyme_lines_and_form_detection_are_shared():
    assert [line_end_mark(i) for i in range(4)] == ["，", "。", "，", "。"]
    assert [i for i in range(8) if line_rhymes(i, False)] == [1, 3, 5, 7]
    assert [i for i in range(4) if line_rhymes(i, True)] == [0, 1, 3]
    for form in FORMS.values():
        poem = form.layout().replace("X", "春")
        assert detect_form(split_verse(poem)) == form and regular_form(poem) == (form.code, None)
    assert detect_form(["春江花月夜"] * 3) is None and regular_form("春江花月夜，春江花月夜。")[0] is None


# ----------------------------------------------------------------------------- the command


def test_check_cli_warnings_count_only_when_asked():
    runner = CliRunner()
    r = runner.invoke(cli, ["check", RARE_RHYME])
    assert r.exit_code == 0 and "rare reading" in r.stdout and "近体" in r.stdout
    assert runner.invoke(cli, ["check", RARE_RHYME, "--warnings-fail"]).exit_code == 1
    r = runner.invoke(cli, ["check", RARE_RHYME, "--readings", "common", "--json"])
    row = json.loads(r.stdout)
    assert r.exit_code == 1 and row["verdict"] == "出韵" and row["readings"] == "common"
    poem = "众鸟高飞尽，孤云独去闲。相看两不厌，只有敬亭山。"
    assert runner.invoke(cli, ["check", poem, "--warnings-fail"]).exit_code == 0
    assert runner.invoke(cli, ["check", poem, "--sanzewei", "--warnings-fail"]).exit_code == 1


def test_check_command_does_not_import_torch():
    import subprocess

    code = ("import sys; from poetgen.app.cli import main; sys.argv=['poetgen','check','白日依山尽，黄河入海流。"
            "欲穷千里目，更上一层楼。']\ntry: main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().endswith("False"), out.stderr

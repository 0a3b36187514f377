"""Poem quality: no 重韵 by construction, the repetition penalty, keywords and themes placed by
construction, the corpus statistics (lexicon) and the scores built on them."""

import json
import random

import pytest
import torch
from click.testing import CliRunner

from poetgen.errors import ConfigError, ConstraintError, CorpusError
from poetgen.lm.config import ModelConfig
from poetgen.lm.corpus import Vocab
from poetgen.lm.model import CharLSTM
from poetgen.settings import GenerationSettings
from poetgen.verse.check import check_poem
from poetgen.verse.constrain import (PoemSpec, _Hyps, _repeat_penalty, compile_spec,
                                     generate_poems, placement_fits)
from poetgen.verse.lexicon import Lexicon, build_lexicon, bundled
from poetgen.verse.metrics import poem_metrics
from poetgen.verse.plan import theme_keywords
from poetgen.verse.prosody import split_verse
from poetgen.verse.repeats import repeated_chars
from poetgen.verse.scores import SAME_CHAR, coherence, couplet_parallelism, couplet_scores
from poetgen.write import write
from test_constrain import common_vocab

TINY = "春江花月夜山水风云雨雪天地人心秋声明光长空日落红南北东西来去不知何处归"  # conftest's HAN


def random_model(vocab, seed=0):
    torch.manual_seed(seed)
    return CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=16, hidden_size=32, cutoffs=())).eval()


@pytest.fixture(scope="module")
def vocab():
    return common_vocab()


@pytest.fixture(scope="module")
def model(vocab):
    return random_model(vocab)


# -- 重韵 and 重字 --------------------------------------------------------------------------------


def repeated_rhymes(lines):
    """Characters ending more than one of line 1 and the even lines: what the decoder never
    writes (stricter than the checker's 重韵, which counts line 1 only when it rhymes)."""
    ends = [line[-1] for i, line in enumerate(lines) if i == 0 or i % 2 == 1]
    return sorted({c for c in ends if ends.count(c) > 1})


def test_repeated_characters_are_counted_as_a_reader_counts_them():
    assert repeated_chars(["萧萧落木下", "滚滚长江来"]) == []  # 叠字 is one use
    assert repeated_chars(["白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"]) == []
    assert repeated_chars(["春风不度关", "春色满园来"]) == ["春"]


@pytest.mark.parametrize("form", ["五绝", "五律", "七绝", "七律"])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("rhyme, tones", [("pingshui", "loose"), ("pingshui", "strict"),
                                          ("modern", "loose"), ("pingshui", "off")])
def test_no_rhyme_is_ever_used_twice(vocab, model, form, temperature, rhyme, tones):
    compiled = compile_spec(PoemSpec.make(form, rhyme=rhyme, tones=tones), vocab)
    poems = generate_poems(model, compiled, n=20, temperature=temperature, seed=3)
    for p in poems:
        lines = split_verse(p.text)
        assert repeated_rhymes(lines) == [], p.text
        assert check_poem(p.text, rhyme=rhyme, tones="off" if tones == "off" else tones).rhyme_ok, p.text


@pytest.mark.parametrize("form", ["五绝", "七绝", "五律", "七律"])
def test_no_repeated_rhyme_in_a_vocabulary_of_few_rhymes(form):
    # 40 characters: only 上平一东 has four (风空红东), so a 律诗 must rhyme there, on all four,
    # with a first line that does not rhyme; the decoder has to see that coming.
    vocab = Vocab.build(TINY + "，。\n")
    model = random_model(vocab, seed=1)
    compiled = compile_spec(PoemSpec.make(form), vocab)
    for p in generate_poems(model, compiled, n=40, temperature=2.0, seed=0):
        assert repeated_rhymes(split_verse(p.text)) == [], p.text
        assert check_poem(p.text).ok, p.text


def test_a_vocabulary_without_enough_distinct_rhymes_is_refused_before_generating():
    vocab = Vocab.build(TINY.replace("东", "") + "，。\n")  # 一东 keeps 风空红: no group has four
    compile_spec(PoemSpec.make("五绝"), vocab)  # three rhymes at most: fine
    with pytest.raises(ConstraintError, match="no rhyme group left has 4 different characters"):
        compile_spec(PoemSpec.make("五律"), vocab)


def test_fixed_characters_that_rhyme_twice_are_refused():
    with pytest.raises(ConstraintError, match="重韵"):
        compile_spec(PoemSpec.make("五绝", pattern="????风/????风"), common_vocab())


def test_repeat_penalty_spares_the_character_just_written_in_the_line(vocab):
    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    h = _Hyps(compiled, 1, "cpu")
    xiao = vocab.id("风")
    h.used[0, xiao] = True
    h.tokens[0, 0] = xiao  # line 1 starts with 风
    step_two = compiled.positions.index((0, 1))
    assert _repeat_penalty(compiled, h, step_two, 2.0)[0, xiao] == 0  # 风风: 叠字, free
    h.tokens[0, step_two] = vocab.id("雨")
    h.used[0, vocab.id("雨")] = True
    step_three = compiled.positions.index((0, 2))
    pen = _repeat_penalty(compiled, h, step_three, 2.0)[0]
    assert pen[xiao] == 2.0 and pen[vocab.id("雨")] == 0 and pen[vocab.id("云")] == 0
    line_two = compiled.positions.index((1, 0))
    assert _repeat_penalty(compiled, h, line_two, 2.0)[0, vocab.id("雨")] == 2.0
    assert _repeat_penalty(compiled, h, line_two, 0.0) is None
    # With a list of the characters poets double, only those double for free: 风风 is not one.
    doubles = torch.tensor([ch in "萧悠" for ch in vocab.chars])
    assert _repeat_penalty(compiled, h, step_two, 2.0, doubles)[0, xiao] == 2.0
    doubles[xiao] = True
    assert _repeat_penalty(compiled, h, step_two, 2.0, doubles)[0, xiao] == 0


def test_repeat_penalty_lowers_repeated_characters(vocab, model):
    compiled = compile_spec(PoemSpec.make("七律"), vocab)

    def rate(penalty):
        poems = generate_poems(model, compiled, n=60, temperature=1.0, seed=5, repeat_penalty=penalty)
        return sum(bool(repeated_chars(split_verse(p.text))) for p in poems) / len(poems)

    free, penalised = rate(0.0), rate(20.0)
    assert free > 0.5  # a random model over ~300 characters repeats in most 56-character poems
    assert penalised < free / 4


def test_line_keep_goes_on_from_the_best_rows_of_each_group():
    from poetgen.verse.constrain import _keep_best

    score = torch.tensor([0.1, 0.9, 0.5, 0.2, -1.0, -3.0, -2.0, 0.0])  # two groups of four
    assert _keep_best(score, 4, 2).tolist() == [1, 2, 1, 2, 7, 4, 7, 4]
    assert _keep_best(score, 4, 1).tolist() == [1, 1, 1, 1, 7, 7, 7, 7]


def test_line_keep_writes_correct_poems_the_model_finds_likelier(vocab):
    # Pruning the weaker lines of each poem's candidates raises the log-probability of what is kept.
    model = random_model(vocab, seed=3)
    compiled = compile_spec(PoemSpec.make("七律"), vocab)
    plain = generate_poems(model, compiled, n=12, best_of=8, seed=0, temperature=1.0)
    kept = generate_poems(model, compiled, n=12, best_of=8, seed=0, temperature=1.0, line_keep=2)
    for p in kept:
        assert check_poem(p.text).ok and repeated_rhymes(split_verse(p.text)) == []
    mean = lambda poems: sum(p.mean_logprob for p in poems) / len(poems)  # noqa: E731
    assert mean(kept) > mean(plain)


def test_beam_search_takes_the_penalty_but_reports_the_models_log_probability(vocab, model):
    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    [plain] = generate_poems(model, compiled, n=1, beam=4, seed=0)
    [penalised] = generate_poems(model, compiled, n=1, beam=4, seed=0, repeat_penalty=50.0)
    assert repeated_chars(split_verse(penalised.text)) == []
    from poetgen.verse.metrics import mean_logprobs
    [again] = mean_logprobs(model, vocab, [penalised.text])
    assert abs(again - penalised.mean_logprob) < 1e-4
    assert repeated_chars(split_verse(plain.text)) != [] or plain.text == penalised.text


# -- keywords and themes --------------------------------------------------------------------------


@pytest.mark.parametrize("form, keywords", [("五绝", "春,雨,江,明月"), ("七绝", "秋,鸟"),
                                            ("五律", "山,水,云,鸟,孤舟"), ("七律", "梅,雪"),
                                            ("七绝", "红,落花,江南,夜,归")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_keyword_is_placed(vocab, model, form, keywords, seed):
    settings = GenerationSettings(form=form, keywords=keywords, seed=seed, n=2, best_of=3,
                                  temperature=1.5)
    words = keywords.split(",")
    for poem in write(model, vocab, settings):
        assert all(w in poem.text for w in words), (poem.text, words)
        lines = split_verse(poem.text)
        for place in poem.plan["placements"]:
            line, start = lines[place["line"] - 1], place["char"] - 1
            assert line[start:start + len(place["word"])] == place["word"]
        assert check_poem(poem.text).ok and repeated_rhymes(lines) == []
    if len(words) == get_lines(form):  # as many keywords as lines: one per line, in order
        assert [p["line"] for p in poem.plan["placements"]] == list(range(1, len(words) + 1))


def get_lines(form):
    return {"五绝": 4, "七绝": 4, "五律": 8, "七律": 8}[form]


def test_keywords_already_in_the_fixed_characters_are_not_placed_again(vocab, model):
    settings = GenerationSettings(form="五绝", keywords="春,雨", acrostic="春", seed=0)
    [poem] = write(model, vocab, settings)
    assert [p["word"] for p in poem.plan["placements"]] == ["雨"]


def test_keywords_that_cannot_be_written_are_refused(vocab, model):
    with pytest.raises(ConstraintError, match="not in the model's vocabulary"):
        write(model, vocab, GenerationSettings(form="五绝", keywords="鑫"))
    with pytest.raises(ConfigError, match="--keywords needs characters or two-character words"):
        GenerationSettings.parse("keywords", "春天来了", "cli")
    with pytest.raises(ConstraintError, match="do not fit"):
        write(model, vocab, GenerationSettings(form="五绝", keywords="春风,江南,青山,黄河,秋声,"
                                                                     "白云,明月,高楼,孤舟,千里,万里"))
    # A strict 五绝 has room for one 平平 word per line: the fifth has nowhere to go.
    with pytest.raises(ConstraintError, match="cannot all be placed"):
        write(model, vocab, GenerationSettings(form="五绝", tones="strict",
                                               keywords="春风,江南,青山,黄河,秋声"))


def test_placement_respects_tones_and_rhymes(vocab):
    compiled = compile_spec(PoemSpec.make("五绝", tones="strict"), vocab)
    assert placement_fits(compiled, {(0, 1): "春"})
    # 仄 at position 2 of every line of one template and 平 in another: both cannot be fixed
    # where all four templates need the opposite, e.g. two 仄 characters at rhyme positions.
    assert not placement_fits(compiled, {(1, 4): "月", (3, 4): "雪"})
    assert not placement_fits(compiled, {(1, 4): "风", (3, 4): "风"})  # 重韵


def test_theme_plan_is_the_same_for_the_same_seed(vocab, model):
    settings = GenerationSettings(form="七绝", theme="秋", seed=11, best_of=2)
    first, again = write(model, vocab, settings), write(model, vocab, settings)
    assert first[0].plan == again[0].plan and first[0].text == again[0].text
    assert first[0].plan["keywords_from"] == "theme" and first[0].plan["keywords"]
    assert all(w in first[0].text for w in first[0].plan["keywords"])
    others = {json.dumps(write(model, vocab, settings.replace(seed=s))[0].plan) for s in range(6)}
    assert len(others) > 1  # seeds draw different plans


def test_theme_keywords_come_from_what_keeps_company_with_the_theme():
    lex, vocab = bundled(), common_vocab()
    rng = random.Random(0)
    words = theme_keywords("秋", lex, vocab, 3, rng)
    assert words[0] == "秋" and len(words) == 3
    assert all(all(c in vocab for c in w) for w in words)
    direction = lex.topic[lex.index["秋"]]
    companion = lex.topic[[lex.index[w] for w in words[1:]]] @ direction
    unrelated = lex.topic[[lex.index[w] for w in ("将军", "僧")]] @ direction
    assert companion.min() > unrelated.max()
    with pytest.raises(ConstraintError, match="know none of its characters"):
        theme_keywords("abc", lex, vocab, 2, rng)


# -- the lexicon and the scores -------------------------------------------------------------------


def synthetic_corpus(n=400, seed=0):
    """Poems in two subjects that never meet: autumn lines and frontier lines."""
    rng = random.Random(seed)
    autumn, frontier = "秋雁霜叶寒月夜砧", "胡马关塞沙兵戍旗"
    filler = "山水风云天地人心来去不知何处归春花"
    poems = []
    for _ in range(n):
        subject = rng.choice([autumn, frontier])
        lines = ["".join(rng.choice(subject if k % 2 else filler) for k in range(5)) for _ in range(8)]
        poems.append("".join(line + ("，" if i % 2 == 0 else "。") for i, line in enumerate(lines)))
    return poems


@pytest.fixture(scope="module")
def small_lexicon():
    return build_lexicon(synthetic_corpus(), source="synthetic")


def test_lexicon_learns_which_characters_keep_company(small_lexicon, tmp_path):
    lex = small_lexicon
    path = tmp_path / "lexicon.safetensors"
    lex.save(path)
    again = Lexicon.load(path)
    assert again.tokens == lex.tokens and again.meta["source"] == "synthetic"
    v = lambda t: again.topic[again.index[t]]  # noqa: E731
    assert v("秋") @ v("雁") > v("秋") @ v("胡")
    assert v("胡") @ v("塞") > v("胡") @ v("霜")
    mixed = ["秋雁霜叶寒", "胡马关塞沙", "寒月夜砧秋", "沙兵戍旗胡"]
    one_subject = ["秋雁霜叶寒", "霜叶寒月夜", "寒月夜砧秋", "雁霜叶秋月"]
    assert coherence(one_subject, again) > coherence(mixed, again)


def test_lexicon_refuses_what_is_not_a_lexicon(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CorpusError, match="not a poetgen lexicon"):
        Lexicon.load(bad)
    with pytest.raises(CorpusError, match="corpus statistics need at least"):
        build_lexicon(["春江花月夜，山水风云雨。"] * 3)


def test_parallelism_tells_facing_lines_from_plain_ones():
    lex = bundled()
    # 杜甫《登高》: its middle couplets are the textbook 对仗, its last couplet is not parallel.
    facing = couplet_parallelism("无边落木萧萧下", "不尽长江滚滚来", lex)
    plain = couplet_parallelism("艰难苦恨繁霜鬓", "潦倒新停浊酒杯", lex)
    assert facing > 0.4 > plain
    # 王维: 明月 / 清泉 face each other; put 明月 in both lines and it faces itself (同字相对).
    assert couplet_parallelism("明月松间照", "清泉石上流", lex) > 0.4
    assert couplet_parallelism("明月松间照", "明月石上流", lex) < 0
    assert SAME_CHAR < 0
    assert len(couplet_scores(["风急天高猿啸哀", "渚清沙白鸟飞回", "无边落木萧萧下", "不尽长江滚滚来",
                               "万里悲秋常作客", "百年多病独登台", "艰难苦恨繁霜鬓", "潦倒新停浊酒杯"],
                              lex)) == 4


def test_check_reports_parallelism_per_couplet():
    report = check_poem("风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。"
                        "万里悲秋常作客，百年多病独登台。艰难苦恨繁霜鬓，潦倒新停浊酒杯。")
    assert len(report.parallelism) == 4 and report.to_dict()["parallelism"] == report.parallelism
    assert report.parallelism[1] > report.parallelism[3]


def test_metrics_count_repeats_and_score_poems():
    poems = ["白日依山尽，黄河入海流。欲穷千里目，更上一层流。",  # 重韵 (and so 重字)
             "春风不度关，春色满园来。红杏出墙去，青山依旧在。"]  # 重字 only
    m = poem_metrics(poems, "五绝", "test", lexicon=bundled())
    assert m.repeated_rhyme == 0.5 and m.repeated_char == 1.0
    assert m.coherence is not None and m.parallelism is None  # 对仗 is for 律诗
    assert poem_metrics(poems, "五绝", "test").coherence is None  # no lexicon, no score
    # No poems (a --real file without this form): nothing measured, not 0% of everything.
    none = poem_metrics([], "七律", "tang_val.txt", lexicon=bundled()).as_dict()
    assert none["poems"] == 0 and none["form_ok"] is None and none["distinct_2"] is None


# -- front ends -------------------------------------------------------------------------------------


def test_cli_writes_keywords_and_shows_the_plan(verse_checkpoint):
    from poetgen.app.cli import cli

    r = CliRunner().invoke(cli, ["sample", "-c", str(verse_checkpoint), "--form", "五绝",
                                 "--keywords", "春,江", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)
    assert "春" in row["text"] and "江" in row["text"]
    assert [p["word"] for p in row["plan"]["placements"]] == ["春", "江"]
    assert "coherence" in row["scores"]
    r = CliRunner().invoke(cli, ["sample", "-c", str(verse_checkpoint), "--form", "七绝",
                                 "--theme", "秋", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "theme 秋 →" in r.output


def test_corpus_lexicon_command_builds_what_sample_then_uses(tmp_path, verse_checkpoint):
    from poetgen.app.cli import cli
    from poetgen.verse.lexicon import lexicon_for

    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n".join(synthetic_corpus(120)) + "\n", encoding="utf-8")
    out = tmp_path / "lexicon.safetensors"
    r = CliRunner().invoke(cli, ["corpus", "lexicon", str(corpus), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert Lexicon.load(out).meta["poems"] == 120
    assert lexicon_for(tmp_path / "best.safetensors").meta["poems"] == 120  # beside a checkpoint
    assert lexicon_for(verse_checkpoint) is bundled()  # none there: the bundled Tang one


def test_repl_uses_the_run_directorys_lexicon(tmp_path, verse_checkpoint, monkeypatch):
    """A run directory with its own lexicon.safetensors: the REPL's poems are themed and ranked
    with it, as `sample`'s are (without one, with the bundled Tang lexicon)."""
    import shutil

    import poetgen.write
    from poetgen.app.cli import cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(verse_checkpoint, run_dir / "best.safetensors")
    build_lexicon(synthetic_corpus(120), source="synthetic").save(run_dir / "lexicon.safetensors")
    seen = []
    real_write = poetgen.write.write

    def spy(*args, **kwargs):
        seen.append(kwargs.get("lexicon"))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(poetgen.write, "write", spy)
    for checkpoint, source in ((run_dir / "best.safetensors", "synthetic"),
                               (verse_checkpoint, bundled().meta["source"])):
        seen.clear()
        r = CliRunner().invoke(cli, ["repl", "-c", str(checkpoint), "--form", "五绝"],
                               input=":seed 3\n春\n:line 2\n")
        assert r.exit_code == 0, r.output
        assert len(seen) == 2  # the poem and the rewritten line
        assert all(lex is not None and lex.meta["source"] == source for lex in seen)


def test_repl_loads_the_lexicon_only_when_a_poem_needs_it(tmp_path, verse_checkpoint):
    """A broken lexicon.safetensors beside the checkpoint does not stop free text; a poem then
    fails with a one-line error that names the file (scripted: exit status 1), as in `sample`."""
    import shutil

    from poetgen.app.cli import cli

    shutil.copy(verse_checkpoint, tmp_path / "best.safetensors")
    (tmp_path / "lexicon.safetensors").write_bytes(b"not a safetensors file")
    checkpoint = str(tmp_path / "best.safetensors")
    r = CliRunner().invoke(cli, ["repl", "-c", checkpoint], input=":mode free\n:seed 1\n春\n")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["repl", "-c", checkpoint, "--form", "五绝"], input="春\n")
    assert r.exit_code == 1 and "lexicon.safetensors" in r.output
    assert "Traceback" not in r.output

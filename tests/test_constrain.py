"""Constrained decoding guarantees form, rhyme and tones: judged by the independent checker."""

import itertools
import random

import pytest
import torch

from poetgen.verse.check import check_poem
from poetgen.lm.config import ModelConfig, TrainConfig
from poetgen.verse.constrain import PoemSpec, compile_spec, generate_poems
from poetgen.lm.corpus import Vocab, encode_tensor
from poetgen.errors import ConstraintError
from poetgen.lm.model import CharLSTM
from poetgen.verse.prosody import split_verse
from poetgen.lm.train import train

# Common characters of Tang verse (plus a few rarer ones), so that every tone and many rhyme groups
# are present, as in a real vocabulary.
COMMON = ("春江花月夜山水风云雨雪天地人心秋声明光长空日落红南北东西来去不知何处归青白黄"
          "千万里年时中上下门前路城楼台草木林树烟霜寒深远近高清流行飞鸟孤舟客家乡思愁"
          "君王我独有无多少自相同生死老少新旧开关望见闻歌酒醉梦魂边关马兵沙海波浪石松"
          "竹梅兰桃柳杨芳香春秋冬夏朝暮晚晓星河汉楚吴越秦江湖溪泉谷峰岭岩洞庭阁殿宫"
          "门窗帘灯火烛琴书剑笔诗词文章衣裳冠带钟鼓笛箫情意怀恨泪悲欢喜乐别离逢迎送")


def common_vocab():
    chars = "".join(dict.fromkeys(COMMON))
    return Vocab.build(chars + "，。\n")


def synthetic_poems(n, seed=0):
    rng = random.Random(seed)
    chars = "".join(dict.fromkeys(COMMON))
    out = []
    for _ in range(n):
        size = rng.choice([5, 7])
        lines = rng.choice([4, 8])
        out.append("".join("".join(rng.choice(chars) for _ in range(size)) + ("，" if i % 2 == 0 else "。")
                           for i in range(lines)))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def vocab():
    return common_vocab()


@pytest.fixture(scope="module")
def random_model(vocab):
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=16, hidden_size=32, cutoffs=())).eval()


@pytest.fixture(scope="module")
def trained_model(vocab, tmp_path_factory):
    text = synthetic_poems(300)
    ids = encode_tensor(vocab, text)
    cfg = TrainConfig(batch_size=8, bptt=32, lr=1e-2, warmup_steps=5, max_steps=60, time_budget=0,
                      eval_every=60, device="cpu", seed=0, sample_chars=5)
    from poetgen.lm.checkpoint import load_checkpoint

    run = tmp_path_factory.mktemp("constrained")
    train(ids, ids[:500], vocab, ModelConfig(embed_size=16, hidden_size=32, cutoffs=()), cfg, run)
    return load_checkpoint(run / "best.safetensors").model


SWEEP_POEMS = 40  # per form, temperature and model: 960 poems here; bench/constrain_sweep.py runs 24,000


@pytest.mark.parametrize("form", ["五绝", "五律", "七绝", "七律"])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])
@pytest.mark.parametrize("which", ["random_model", "trained_model"])
def test_constrained_poems_are_all_correct(request, vocab, which, temperature, form):
    model = request.getfixturevalue(which)
    compiled = compile_spec(PoemSpec.make(form, rhyme="pingshui", tones="strict"), vocab)
    poems = generate_poems(model, compiled, n=SWEEP_POEMS, temperature=temperature, seed=1)
    assert len(poems) == SWEEP_POEMS
    for p in poems:
        report = check_poem(p.text, rhyme="pingshui", tones="strict")
        assert report.ok and report.form == form, (p.text, report.violations)


@pytest.mark.parametrize("form", ["五绝", "七律"])
@pytest.mark.parametrize("tones", ["loose", "off"])
def test_modern_rhyme_and_other_tone_modes(random_model, vocab, form, tones):
    """Modern rhyme reads a 多音字 by its neighbours (长 in 长城 is cháng), which the masks cannot
    know: the poems still pass the checker under the decoder's own readings ("common")."""
    spec = PoemSpec.make(form, rhyme="modern", tones=tones)
    compiled = compile_spec(spec, vocab)
    sampled = generate_poems(random_model, compiled, n=300, temperature=1.5, seed=2)
    beamed = generate_poems(random_model, compiled, n=4, beam=8, seed=2)
    for p in sampled + beamed:
        report = check_poem(p.text, rhyme="modern", tones=tones, readings=spec.readings)
        assert report.ok and report.rhyme_ok, (p.text, report.violations)


def test_acrostic_with_any_punctuation_pattern_and_no_repeat(random_model, vocab):
    spec = PoemSpec.make("七绝", acrostic="春，江？ 花！月", pattern="??????? / ??山????",
                         no_repeat=True, tones="loose")
    for p in generate_poems(random_model, compile_spec(spec, vocab), n=200, temperature=2.0, seed=3):
        lines = split_verse(p.text)
        assert [x[0] for x in lines] == list("春江花月")
        assert lines[1][2] == "山"
        han = "".join(lines)
        assert len(set(han)) == len(han)
        assert check_poem(p.text).ok


def test_rhyme_group_by_name_or_character(random_model, vocab):
    for spec_group, expected in [("下平七阳", "下平七阳"), ("七阳", "下平七阳"), ("霜", "下平七阳")]:
        compiled = compile_spec(PoemSpec.make("五律", rhyme_group=spec_group), vocab)
        for p in generate_poems(random_model, compiled, n=50, seed=4):
            assert check_poem(p.text).rhyme_group == expected


def test_prime_is_the_poems_opening(random_model, vocab):
    compiled = compile_spec(PoemSpec.make("五绝", prime="白日青山"), vocab)
    assert all(p.text.startswith("白日青山") for p in generate_poems(random_model, compiled, n=20, seed=5))


def test_best_of_and_beam_raise_likelihood(trained_model, vocab):
    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    plain = generate_poems(trained_model, compiled, n=40, seed=6)
    best = generate_poems(trained_model, compiled, n=40, seed=6, best_of=8)
    mean = lambda ps: sum(p.mean_logprob for p in ps) / len(ps)  # noqa: E731
    assert mean(best) > mean(plain)
    beam = generate_poems(trained_model, compiled, n=4, beam=8, seed=0)
    scores = [p.logprob for p in beam]
    assert scores == sorted(scores, reverse=True) and scores[0] > max(p.logprob for p in best)
    assert all(check_poem(p.text).ok for p in beam)


def test_novel_rejects_copied_lines(random_model, vocab):
    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    first = generate_poems(random_model, compiled, n=30, seed=7, temperature=0.3)
    seen = {line for p in first for line in split_verse(p.text)}
    again = generate_poems(random_model, compiled, n=30, seed=7, temperature=0.3, novel_lines=seen)
    assert all(not set(split_verse(p.text)) & seen for p in again)


@pytest.mark.parametrize("spec, message", [
    (dict(form="九绝"), "unknown form"),
    (dict(form="五绝", acrostic="鑫春江花"), "'鑫' (line 1, character 1) is not in the model's vocabulary"),
    (dict(form="五绝", acrostic="春江花月夜"), "acrostic has 5 characters but a 五绝 has 4 lines"),
    (dict(form="五绝", acrostic="？！"), "holds no Chinese character"),
    (dict(form="五绝", pattern="??春?"), "has 4 characters; a 五绝 line has 5"),
    (dict(form="五绝", pattern="??x??"), "not a Chinese character"),
    (dict(form="五绝", rhyme_group="下平三肴"), "no rhyming character"),
    (dict(form="五绝", rhyme_group="去声一送"), "oblique (仄) group"),
    (dict(form="五绝", rhyme_group="不是韵"), "unknown rhyme group"),
    (dict(form="五绝", acrostic="春", banned="春"), "both required and banned"),
    (dict(form="七律", acrostic="春江", tones="strict"), "cannot be 仄"),
    (dict(form="五绝", pattern="????月/????月", no_repeat=True), "repeat 月"),
    (dict(form="五绝", prime="春江花月，"), "should be a Chinese character"),
])
def test_impossible_constraints_fail_before_generating(vocab, spec, message):
    form = spec.pop("form")
    with pytest.raises(ConstraintError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        compile_spec(PoemSpec.make(form, **spec), vocab)


@pytest.mark.parametrize("spec, fix", [
    (dict(pattern="????江/????月"), "— use another character or --tones off"),
    (dict(pattern="????江/????月", tones="strict"), "— use another character or --tones loose or off"),
    (dict(pattern="????春/????秋"), "give fixed characters that rhyme with each other"),
    (dict(rhyme_group="下平三肴"), "— choose another rhyme group or use --tones off"),
    (dict(rhyme_group="下平三肴", banned="春"), "choose another rhyme group, use --tones off or ban "
                                               "fewer characters"),
    (dict(rhyme_group="下平三肴", tones="off"), "— choose another rhyme group"),
])
def test_an_impossible_poem_is_told_what_would_make_it_possible(vocab, spec, fix):
    """The fix offered follows the settings: a looser --tones than the one given, --ban only
    where characters are banned."""
    with pytest.raises(ConstraintError) as e:
        compile_spec(PoemSpec.make("五绝", **spec), vocab)
    assert fix in str(e.value) and str(e.value).count(" — ") == 1


def test_vocabulary_without_verse_punctuation_is_refused():
    with pytest.raises(ConstraintError, match="no '，'"):
        compile_spec(PoemSpec.make("五绝"), Vocab.build("hello world\n"))


def test_no_repeat_never_uses_up_a_fixed_character_early(random_model, vocab):
    """With --no-repeat, a later acrostic head must not be written earlier (no dead ends, no redos)."""
    import poetgen.verse.constrain as constrain

    calls = []
    original = constrain._sample
    constrain._sample = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        spec = PoemSpec.make("七律", acrostic="春江花月夜山风雨", no_repeat=True, tones="off", rhyme=None)
        poems = generate_poems(random_model, compile_spec(spec, vocab), n=200, temperature=3.0, seed=8)
    finally:
        constrain._sample = original
    assert len(calls) == 1  # one round: no poem hit a dead end
    for p in poems:
        han = "".join(split_verse(p.text))
        assert len(set(han)) == len(han) and [x[0] for x in split_verse(p.text)] == list("春江花月夜山风雨")


@pytest.mark.parametrize("spec", [
    dict(form="七律", acrostic="春江花月夜山风雨", no_repeat=True),
    dict(form="五绝"),
    dict(form="七绝", pattern="??春????/???????", rhyme="modern"),
])
def test_the_shortcut_steps_write_what_the_full_masks_write(trained_model, vocab, spec):
    """A step the layout forces is taken without masks or a draw (forced_at), and a rhyme every
    template shares without (n, K, V) masks (shared_rhyme_step). The oracle is the decoder with
    both turned off, full masks at every step: the same seed must give the same poems, scores,
    templates and rhyme groups."""
    import dataclasses

    compiled = compile_spec(PoemSpec.make(**spec), vocab)
    assert any(c is not None for c in compiled.forced_at) and any(compiled.shared_rhyme_step)
    full = dataclasses.replace(compiled)  # the same masks, without the step tables worked out
    full.__dict__["forced_at"] = [None] * full.steps
    full.__dict__["shared_rhyme_step"] = [False] * full.steps
    for settings in (dict(n=6, best_of=2, repeat_penalty=1.5, line_keep=1), dict(n=3)):
        fast = generate_poems(trained_model, compiled, seed=3, temperature=1.5, **settings)
        slow = generate_poems(trained_model, full, seed=3, temperature=1.5, **settings)
        assert [p.to_dict() for p in fast] == [p.to_dict() for p in slow]


def test_a_compiled_spec_is_kept_and_generation_leaves_it_as_it_was(random_model, vocab):
    spec = dict(acrostic="春江", no_repeat=True)
    compiled = compile_spec(PoemSpec.make("五律", **spec), vocab)
    assert compile_spec(PoemSpec.make("五律", **spec), vocab) is compiled  # an equal spec: kept
    assert compile_spec(PoemSpec.make("五律", acrostic="春山"), vocab) is not compiled
    assert compile_spec(PoemSpec.make("五律", **spec), vocab, fresh=True) is not compiled
    before = {k: v.clone() for k, v in vars(compiled).items() if isinstance(v, torch.Tensor)}
    generate_poems(random_model, compiled, n=4, seed=1, best_of=2)
    assert all(torch.equal(getattr(compiled, k), v) for k, v in before.items())


@pytest.mark.parametrize("precision", ["fp32", "int8", "bf16", "w8a8"])
def test_the_shortcut_steps_with_an_adaptive_softmax_and_reduced_copies(vocab, precision):
    """The same oracle on a model with an adaptive softmax, whose forced steps are scored from
    the head alone (log_prob_of), under each precision: the shortlist holds the punctuation."""
    import dataclasses

    torch.manual_seed(3)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=16, hidden_size=32,
                                 cutoffs=(40, 120))).eval()
    model.inference_precision = precision
    compiled = compile_spec(PoemSpec.make("七绝", acrostic="春江花月"), vocab)
    assert any(char is not None and char < 40 for char in compiled.forced_at)  # '，' '。' '\n'
    full = dataclasses.replace(compiled)
    full.__dict__["forced_at"] = [None] * full.steps
    full.__dict__["shared_rhyme_step"] = [False] * full.steps
    fast = generate_poems(model, compiled, n=4, seed=5, best_of=2, repeat_penalty=1.0)
    slow = generate_poems(model, full, n=4, seed=5, best_of=2, repeat_penalty=1.0)
    assert [p.to_dict() for p in fast] == [p.to_dict() for p in slow]


def test_rhyme_groups_still_live_give_what_every_group_gives(vocab):
    """_may_rhyme multiplies only over the groups some row may still rhyme in; the oracle is
    the product over all of them, on random candidate sets (an empty one among them)."""
    from poetgen.verse.constrain import _Hyps, _may_rhyme

    compiled = compile_spec(PoemSpec.make("五律"), vocab)
    g = torch.Generator().manual_seed(0)
    h = _Hyps(compiled, 6, "cpu")
    G, V = compiled.member.shape[1], len(vocab)
    for density in (0.0, 0.02, 0.3):
        h.cand = torch.rand(6, G, generator=g) < density
        h.rhymed = torch.rand(6, V, generator=g) < 0.05
        left = torch.tensor([1.0, 2.0, 4.0])
        member = compiled.member.float()
        free = compiled.rhyme_count[None] - h.rhymed.float() @ member
        groups = (h.cand[:, None, :] & (free[:, None, :] >= left[None, :, None])).float()
        want = ((groups @ member.T) > 0) & ~h.rhymed[:, None, :]
        assert torch.equal(_may_rhyme(compiled, h, left), want)


@pytest.mark.parametrize("form", [None, "五绝"])
def test_the_choices_offered_at_a_vanishing_temperature_are_the_likeliest_at_certainty(
        random_model, vocab, form):
    """The REPL's :pick at temperature 1e-40: one choice at probability 1, none NaN (logp /
    1e-40 overflowed to -inf everywhere, and the softmax was NaN)."""
    from poetgen.verse.constrain import Stepper

    compiled = compile_spec(PoemSpec.make(form), vocab) if form else None
    stepper = Stepper(random_model, vocab, compiled)
    likeliest = stepper.choices(3, temperature=1.0)[0][0]
    choices = stepper.choices(3, temperature=1e-40)
    assert choices[0] == (likeliest, 1.0) and all(p == 0.0 for _, p in choices[1:])


def test_the_stepper_leaves_a_training_model_in_training_mode(vocab):
    """It used to switch the model to evaluation mode for good (model.eval() on creation)."""
    from poetgen.verse.constrain import Stepper

    torch.manual_seed(1)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embed_size=16, hidden_size=32,
                                 cutoffs=(), dropout=0.5)).train()
    stepper = Stepper(model, vocab, compile_spec(PoemSpec.make("五绝"), vocab))
    first = stepper.choices(3)
    assert model.training and stepper.choices(3) == first  # no dropout in the choices
    stepper.push(first[0][0])
    stepper.finish(seed=0)
    assert model.training and check_poem(stepper.text, tones="loose").form == "五绝"


def test_many_poems_go_in_batches_of_bounded_rows(random_model, vocab, monkeypatch):
    """n x best_of rows were sampled at once: `sample --n 10000` asked for 160,000 rows of
    (templates x vocabulary) masks. In batches of ROWS_PER_BATCH rows (whole poems each), every
    poem is still written, correct, and a batch that fits is the same as before."""
    import poetgen.verse.constrain as constrain

    compiled = compile_spec(PoemSpec.make("五绝", tones="strict"), vocab)
    whole = generate_poems(random_model, compiled, n=6, best_of=4, seed=5, line_keep=2)
    seen = []
    real_sample = constrain._sample
    monkeypatch.setattr(constrain, "_sample", lambda model, c, n, *a, **k: seen.append(n) or
                        real_sample(model, c, n, *a, **k))
    monkeypatch.setattr(constrain, "ROWS_PER_BATCH", 10)  # two poems' candidates a batch
    batched = generate_poems(random_model, compiled, n=6, best_of=4, seed=5, line_keep=2)
    assert seen[:3] == [8, 8, 8] and max(seen) <= 10
    assert len(batched) == 6 and all(check_poem(p.text, tones="strict").ok for p in batched)
    monkeypatch.setattr(constrain, "ROWS_PER_BATCH", 24)  # all six poems' 24 rows: one batch
    seen.clear()
    assert [p.text for p in generate_poems(random_model, compiled, n=6, best_of=4, seed=5,
                                           line_keep=2)] == [p.text for p in whole]
    assert seen == [24]


def test_the_stepper_takes_typed_punctuation_and_heads_the_form_wrote_itself(random_model, vocab):
    """:pick with a whole line typed, '，' included: the '，' the form had already written was
    refused as 'not allowed here' and the rest of the line was dropped."""
    from poetgen.verse.constrain import Stepper

    spec = PoemSpec.make("五绝", rhyme=None, tones="off", acrostic="春江花月")
    stepper = Stepper(random_model, vocab, compile_spec(spec, vocab))
    assert stepper.text == "春"  # the head, written by the form
    for ch in "春风千万里，江水自东流。":
        stepper.push(ch)
    assert stepper.text == "春风千万里，江水自东流。花"
    for ch in "花落":  # the line typed without its ，(the form wrote "。花")
        stepper.push(ch)
    assert stepper.text == "春风千万里，江水自东流。花落"
    with pytest.raises(ConstraintError, match="not allowed here"):
        stepper.push("，")  # where the form has not written one, still refused
    stepper = Stepper(random_model, vocab, compile_spec(spec, vocab))
    for ch in "春风千万里江水":  # line 2 typed with its head and without the ，
        stepper.push(ch)
    assert stepper.text == "春风千万里，江水"  # 江 not twice


def test_beam_search_returns_only_what_the_checker_passes(random_model, vocab, monkeypatch):
    """The beam path filters by the checker too (modern rhyme's in-context readings); here a
    stand-in checker refuses the best beam."""
    import poetgen.verse.constrain as constrain

    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    beams = [p.text for p in generate_poems(random_model, compiled, n=6, beam=6, seed=1)]
    monkeypatch.setattr(constrain, "_checker_passes", lambda spec: lambda text: text != beams[0])
    kept = generate_poems(random_model, compiled, n=5, beam=6, seed=1)
    assert [p.text for p in kept] == beams[1:]
    with pytest.raises(ConstraintError, match="found only 5 of the 6 poem.s. asked for that pass "
                                              "the checker; sample instead"):
        generate_poems(random_model, compiled, n=6, beam=6, seed=1)


def test_checker_rejections_do_not_count_against_rounds_that_make_progress(random_model, vocab,
                                                                           monkeypatch):
    """Eight rounds in all were allowed: with the checker setting a third of candidates aside,
    one poem in 6,561 failed a whole `--n 1000` command. Only rounds that finish nothing count."""
    import poetgen.verse.constrain as constrain

    compiled = compile_spec(PoemSpec.make("五绝"), vocab)
    calls = itertools.count()  # every other candidate refused: three rounds for three poems
    monkeypatch.setattr(constrain, "_checker_passes",
                        lambda spec: lambda text: next(calls) % 2 == 1)
    poems = generate_poems(random_model, compiled, n=3, seed=1, max_rounds=1)
    assert len(poems) == 3 and next(calls) == 6
    monkeypatch.setattr(constrain, "_checker_passes", lambda spec: lambda text: False)
    with pytest.raises(ConstraintError, match="in 2 tries in a row: the checker read a 多音字"):
        generate_poems(random_model, compiled, n=2, seed=1, max_rounds=2)

"""The settings table: every generation setting reaches the front ends it is meant for, and the
command line, the REPL and Python check it with the same rule and the same words."""

import io

import pytest
from click.testing import CliRunner
from rich.console import Console

import poetgen
from poetgen.app.cli import cli, eval_cmd, repl, sample
from poetgen.app.repl import ScriptUI, Session, help_table
from poetgen.errors import ConfigError
from poetgen.settings import GenerationSettings

OPTIONS = GenerationSettings.options()
# Texts that some setting refuses; for each field the first one its parser refuses is used.
BAD_TEXTS = ["abc", "-1", "0", "2", "inf", "99999999999999999999999", "九言", "春a花月", "春😀花月"]


def first_refused(field_name: str) -> str | None:
    for text in BAD_TEXTS:
        try:
            GenerationSettings.parse(field_name, text, "api")
        except ConfigError:
            return text
    return None


def problem(message: str, public_name: str) -> str:
    """The message without the setting's name: what both front ends must agree on."""
    assert public_name in message, message
    return message.split(public_name, 1)[1].strip()


def repl_session() -> Session:
    out = Console(file=io.StringIO())
    ui = ScriptUI(io.StringIO(), out, out)
    return Session(None, None, ui, GenerationSettings(form="七绝"))


def said(session: Session) -> str:
    return session.ui.out.file.getvalue()


def test_every_cli_setting_is_an_option_of_sample():
    params = {p.name for p in sample.params}
    assert set(GenerationSettings.options("cli")) <= params
    assert not {"mode"} & params  # REPL-only settings stay out of the command line


def test_every_repl_setting_is_a_command_with_help():
    console = Console(file=io.StringIO(), width=100)
    console.print(help_table())
    text = console.file.getvalue()
    for name, option in GenerationSettings.options("repl").items():
        assert GenerationSettings.field_for(option.name, "repl") == name
        assert f":{option.name}" in text
    assert GenerationSettings.field_for("novel", "repl") is None  # CLI-only


def expected_problem(field_name: str, text: str, side: str) -> str:
    with pytest.raises(ConfigError) as e:
        GenerationSettings.parse(field_name, text, side)
    return problem(str(e.value), GenerationSettings.public(field_name, side))


@pytest.mark.parametrize("field_name", [n for n in OPTIONS if first_refused(n) is not None])
def test_same_rule_and_words_on_every_side(field_name):
    option, bad = OPTIONS[field_name], first_refused(field_name)
    if not option.limits:  # a side-specific limit (--n up to 10,000, :n up to 100) may differ
        assert len({expected_problem(field_name, bad, side) for side in option.sides + ("api",)}) == 1
    if "cli" in option.sides and not option.flag:
        r = CliRunner().invoke(cli, ["sample", option.public("cli"), bad])
        assert r.exit_code != 0 and "Traceback" not in r.output
        shown = problem(r.output.strip().removeprefix("Error: "), option.public("cli"))
        assert shown == expected_problem(field_name, bad, "cli")
    if "repl" in option.sides:
        with pytest.raises(ConfigError) as at_repl:
            repl_session().handle(f"{option.public('repl')} {bad}")
        shown = problem(str(at_repl.value), option.public("repl"))
        assert shown == expected_problem(field_name, bad, "repl")


@pytest.mark.parametrize("field_name, text, value", [
    ("temperature", "0.5", 0.5), ("top_k", "20", 20), ("form", "7x4", "七绝"),
    ("seed", "42", 42), ("acrostic", "春江花月", "春江花月"), ("rhyme", "modern", "modern"),
])
def test_a_value_means_the_same_on_both_sides(field_name, text, value):
    option = OPTIONS[field_name]
    session = repl_session()
    session.handle(f":{option.name} {text}")
    assert getattr(session.settings, field_name) == value
    assert GenerationSettings.parse(field_name, text, "cli") == value


def test_side_specific_limits():
    assert GenerationSettings.parse("n", "5000", "cli") == 5000
    with pytest.raises(ConfigError, match=r":n needs a whole number from 1 to 100"):
        GenerationSettings.parse("n", "5000", "repl")


@pytest.mark.parametrize("changes, side, message", [
    (dict(acrostic="春江"), "cli", "--acrostic needs --form"),
    (dict(acrostic="春江"), "api", "acrostic needs form"),
    (dict(form="七绝", acrostic="春江花月夜"), "repl", ":acrostic 春江花月夜 has 5 characters"),
    (dict(form="五绝", beam=2, n=3), "cli", "--beam 2 keeps 2 candidates"),
    (dict(form="五绝", rhyme_group="没有这个韵"), "repl", ":rhyme-group: unknown rhyme group"),
])
def test_settings_that_do_not_fit_together(changes, side, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(**changes).validate(side)


def test_repl_refuses_a_setting_that_conflicts_and_keeps_the_old_settings():
    session = repl_session()
    session.handle(":n 3")
    with pytest.raises(ConfigError, match=r":beam 2 keeps 2 candidates; .* \(:n\)"):
        session.handle(":beam 2")
    assert (session.settings.n, session.settings.beam) == (3, 0)
    session.handle(":form 五绝")
    with pytest.raises(ConfigError, match=":acrostic 春江花月夜 has 5 characters but a 五绝 has 4"):
        session.handle(":acrostic 春江花月夜")
    assert session.settings.acrostic == ""


def test_repl_clears_an_older_setting_that_a_new_form_no_longer_fits():
    session = repl_session()
    session.handle(":form 五律")
    session.handle(":acrostic 春江花月夜")  # five heads: fine for eight lines
    session.handle(":form 五绝")
    assert (session.settings.form, session.settings.acrostic) == ("五绝", "")
    assert (":acrostic 春江花月夜 cleared: :acrostic 春江花月夜 has 5 characters but a 五绝 has 4 "
            "lines") in " ".join(said(session).split())


def test_eval_and_repl_take_their_generation_options_from_the_table():
    for command, fields in ((eval_cmd, ("temperature", "tones", "best_of", "seed", "novel")),
                            (repl, ("form", "seed", "temperature"))):
        params = {p.name: p for p in command.params}
        for name in fields:
            assert params[name].opts == [OPTIONS[name].public("cli")]


def test_python_api_names_settings_as_python_does():
    with pytest.raises(ConfigError, match="temperature needs a number > 0"):
        GenerationSettings(temperature=-1).validate()
    assert poetgen.GenerationSettings is GenerationSettings


def test_decoder_messages_name_settings_as_each_side_does():
    """The constrained decoder words its errors with flags; the REPL and Python rename them."""
    message = "--prime puts '秋' where --acrostic puts '春'; --no-repeat; --top-k; --unknown"
    assert GenerationSettings.named_for(message, "cli") == message
    assert GenerationSettings.named_for(message, "repl") == \
        "the start puts '秋' where :acrostic puts '春'; :no-repeat; :top-k; --unknown"
    assert GenerationSettings.named_for(message, "api") == \
        "prime puts '秋' where acrostic puts '春'; no_repeat; top_k; --unknown"


def test_the_poem_settings_offer_what_the_checker_and_decoder_accept():
    """One tuple each (prosody): the settings' choices, `check`'s, and what the core refuses."""
    import dataclasses

    from poetgen.errors import ConfigError
    from poetgen.verse.check import check_poem
    from poetgen.verse.prosody import READINGS, RHYME_SCHEMES, TONE_MODES, scheme

    options = {f.name: f.metadata["option"] for f in dataclasses.fields(GenerationSettings)}
    assert options["tones"].choices == TONE_MODES and options["readings"].choices == READINGS
    assert options["rhyme"].choices == (*RHYME_SCHEMES, "off")
    poem = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
    for tones in TONE_MODES:  # each is judged (strict finds 欲穷千里目's 拗)
        assert check_poem(poem, tones=tones).tones == tones
    for bad in (dict(tones="lose"), dict(readings="some"), dict(rhyme="new")):
        with pytest.raises(ConfigError, match="must be"):
            check_poem(poem, **bad)
    assert {type(scheme(name)).__name__ for name in RHYME_SCHEMES} == {"Pingshui", "Modern"}


def test_free_text_batches_are_bounded_where_the_setting_is_made():
    """:max-chars 99999999999999999999 was accepted and crashed the next text with an overflow
    and a C++ stack in the message; :n 100 with :max-chars 10^8 allocated 160 GB."""
    with pytest.raises(ConfigError, match=":max-chars needs a whole number from 1 to 10000000"):
        GenerationSettings.parse("max_chars", "99999999999999999999", "repl")
    big = GenerationSettings(mode="free", n=100, max_chars=1_000_000)
    with pytest.raises(ConfigError, match="--n 100 x --max-chars 1000000 is 100,000,000 characters"):
        big.validate("cli")
    GenerationSettings(mode="free", n=10, max_chars=1_000_000).validate("cli")  # 10 million: fine
    GenerationSettings(form="七绝", n=100, max_chars=1_000_000).validate("cli")  # poems: no text buffer

"""The Python API gives what the command line gives, with the same errors, and imports cheaply."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import poetgen
from poetgen.app.cli import cli
from poetgen.verse.check import check_poem

from test_constrain import synthetic_poems


@pytest.fixture(scope="module")
def checkpoint(verse_checkpoint):
    return verse_checkpoint


def test_importing_poetgen_and_checking_a_poem_does_not_import_torch():
    code = ("import sys, poetgen; r = poetgen.check('白日依山尽，黄河入海流。欲穷千里目，更上一层楼。'); "
            "print(r.ok, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_write_gives_what_sample_gives(checkpoint):
    poet = poetgen.load(checkpoint)
    poems = poet.write(form="五绝", n=3, seed=11, temperature=0.7)
    r = CliRunner().invoke(cli, ["sample", "-c", str(checkpoint), "--form", "五绝", "--n", "3",
                                 "--seed", "11", "--temp", "0.7", "--json"])
    assert r.exit_code == 0, r.output
    assert [json.loads(line) for line in r.stdout.splitlines()] == [p.to_dict() for p in poems]
    assert all(check_poem(p.text).ok and p.form == "五绝" for p in poems)


def test_write_free_text_and_settings_object(checkpoint):
    poet = poetgen.load(checkpoint)
    base = poetgen.GenerationSettings(max_chars=12, no_stop=True, seed=3)
    texts = poet.write(base, n=2)
    assert len(texts) == 2 and all(len(t.text) == 12 for t in texts)
    assert [t.text for t in poet.write(base, n=2)] == [t.text for t in texts]  # seeded


def test_score_is_the_eval_figure(checkpoint, tmp_path):
    text = synthetic_poems(5, seed=4)
    path = tmp_path / "val.txt"
    path.write_text(text, encoding="utf-8")
    r = CliRunner().invoke(cli, ["eval", str(checkpoint), str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert poetgen.load(checkpoint).score(text) == pytest.approx(json.loads(r.stdout)["bpc"], abs=1e-4)


@pytest.mark.parametrize("changes, message", [
    (dict(temperature=0), "temperature needs a number > 0"),
    (dict(colour="red"), "unknown setting"),
    (dict(acrostic="春江"), "acrostic needs form"),
    (dict(prime="鑫"), "never saw"),
])
def test_errors_are_poetgen_errors(checkpoint, changes, message):
    with pytest.raises(poetgen.PoetgenError, match=message):
        poetgen.load(checkpoint).write(**changes)


@pytest.mark.parametrize("changes, same_as", [
    (dict(n="2", temperature="0.5", seed="7"), dict(n=2, temperature=0.5, seed=7)),
    (dict(no_repeat="off", theme="off", ban=None, acrostic=None), dict()),
    (dict(temperature=1), dict(temperature=1.0)),
])
def test_text_reads_as_on_the_command_line_and_none_is_off(checkpoint, changes, same_as):
    """Strings were checked by their text but then used raw (n="2" crashed deep in the decoder,
    no_repeat="off" meant on); None crashed where a setting is text."""
    poet = poetgen.load(checkpoint)
    base = dict(form="五绝", seed=3)
    assert [p.text for p in poet.write(**{**base, **changes})] == \
        [p.text for p in poet.write(**{**base, **same_as})]
    assert isinstance(poet.write(form="off", seed=1, max_chars=5)[0], poetgen.api.Sample)


def test_numbers_of_any_numeric_type_are_numbers(checkpoint):
    """numpy's integers and floats (a sweep's np.arange) worked before the type check, and must."""
    np = pytest.importorskip("numpy")
    poet = poetgen.load(checkpoint)
    assert [p.text for p in poet.write(form="五绝", n=np.int64(2), temperature=np.float32(0.5),
                                       seed=np.int64(4))] == \
        [p.text for p in poet.write(form="五绝", n=2, temperature=float(np.float32(0.5)), seed=4)]
    with pytest.raises(poetgen.ConfigError, match="temperature needs a number > 0"):
        poet.write(form="五绝", temperature=10**400)  # OverflowError in float()


@pytest.mark.parametrize("call, message", [
    (lambda poet: poet.write(form="五绝", n=False), "n needs a whole number .* not False"),
    (lambda poet: poet.write(form="五绝", n=2.5), "n needs a whole number"),
    (lambda poet: poet.write(form="五绝", no_repeat=1), "no_repeat needs True or False"),
    (lambda poet: poet.write(poetgen.GenerationSettings(form="五绝", n="2")), "n needs"),
    (lambda poet: poet.write({"form": "五绝"}), "first argument is a GenerationSettings"),
    (lambda poet: poet.write(form="五绝", prime_file="/no/such/file"), "^prime_file /no/such"),
    (lambda poet: poet.score(5), "score needs some text"),
    (lambda poet: poetgen.check(None), "check needs the poem's text"),
    (lambda poet: poetgen.check("白日依山尽", rhyme="new"), "rhyme scheme must be"),
    (lambda poet: poetgen.load("default", device="gpu"), "^device gpu: use auto"),
])
def test_wrong_values_from_python_are_config_errors(checkpoint, call, message):
    with pytest.raises(poetgen.ConfigError, match=message):
        call(poetgen.load(checkpoint))


def test_check_returns_a_structured_report():
    report = poetgen.check("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。")
    assert report.ok and report.form == "五绝" and report.to_dict()["ok"] is True
    bad = poetgen.check("白日依山尽，黄河入海流。欲穷千里目，更上一层山。")
    assert not bad.ok and bad.violations


def test_load_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(poetgen.CheckpointError):
        poetgen.load(tmp_path / "none.safetensors")


def test_precision_reaches_the_model_from_the_cli_and_the_api(checkpoint, monkeypatch):
    """--precision (and load(precision=)) sets how the model multiplies on a CPU; a poem batch
    written either way is a valid poem batch, and an unknown value is refused in one line."""
    import poetgen.app.cli as cli_mod
    from poetgen.errors import ConfigError

    seen = []
    real = cli_mod.Loaded.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.ck.model.inference_precision)

    monkeypatch.setattr(cli_mod.Loaded, "__init__", spy)
    for precision in ("fp32", "bf16", "int8"):
        r = CliRunner().invoke(cli, ["sample", "-c", str(checkpoint), "--form", "五绝", "--n", "4",
                                     "--seed", "2", "--precision", precision])
        assert r.exit_code == 0, r.output
        poems = r.stdout.splitlines()
        assert len(poems) == 4 and all(check_poem(p).ok for p in poems)
    assert seen == ["fp32", "bf16", "int8"]
    # Every command defaults to auto: the fastest copies this CPU has for each batch size.
    assert CliRunner().invoke(cli, ["sample", "-c", str(checkpoint), "--n", "1"]).exit_code == 0
    r = CliRunner().invoke(cli, ["eval", str(checkpoint), str(checkpoint.parent.parent / "poems.txt")])
    assert r.exit_code == 0, r.output
    assert seen[3:] == ["auto", "auto"]
    assert poetgen.load(checkpoint).model.inference_precision == "auto"
    r = CliRunner().invoke(cli, ["sample", "-c", str(checkpoint), "--precision", "fp16"])
    assert r.exit_code == 2 and "fp16" in r.output
    assert poetgen.load(checkpoint, precision="bf16").model.inference_precision == "bf16"
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, int8"):
        poetgen.load(checkpoint, precision="fp16")

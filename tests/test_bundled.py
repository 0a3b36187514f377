"""The bundled Tang model: it loads as `default`, its files agree, and it writes correct poems."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from poetgen.verse.check import check_poem
from poetgen.lm.checkpoint import BUNDLED, load_checkpoint, read_meta, resolve
from poetgen.app.cli import cli
from poetgen.lm.config import load_toml
from poetgen.verse.constrain import PoemSpec, compile_spec, generate_poems

from conftest import SHARED


def test_bundled_model_is_installed_and_small():
    assert BUNDLED.exists(), "poetgen/data/tang.safetensors is missing"
    assert BUNDLED.stat().st_size < 16_000_000
    assert resolve("default") == BUNDLED


def test_bundled_metadata_and_hash_are_consistent():
    meta = read_meta(BUNDLED)
    ck = load_checkpoint(BUNDLED)  # verifies the SHA-256 of the tensors, shapes and vocabulary
    assert meta["dtype"] == "float16" and meta["config"]["vocab_size"] == len(ck.vocab)
    assert meta["training"]["best_val_bpc"] == pytest.approx(meta["training"]["val_bpc"])
    assert {"，", "。", "\n"} <= set(ck.vocab.chars)


def test_bundled_model_was_trained_with_the_committed_config():
    """checkpoints/tang-v3.toml, the README's reproduction command, is what the model's header
    records it was trained with, field for field."""
    committed = load_toml(Path(__file__).parents[1] / "checkpoints" / "tang-v3.toml")
    meta = read_meta(BUNDLED)
    recorded = {**meta["config"], **meta["train_config"]}
    for name, value in committed.items():
        assert recorded[name] == (list(value) if isinstance(value, tuple) else value), name


@pytest.mark.parametrize("form", ["五绝", "五律", "七绝", "七律"])
@pytest.mark.parametrize("rhyme", ["pingshui", "modern"])
def test_bundled_model_writes_correct_poems(form, rhyme):
    """Judged by the checker under the decoder's own readings (common), as `poetgen check
    --readings common` would judge them; modern rhyme reads 多音字 in context."""
    ck = load_checkpoint(BUNDLED)
    spec = PoemSpec.make(form, rhyme=rhyme, tones="strict")
    for p in generate_poems(ck.model, compile_spec(spec, ck.vocab), n=50, temperature=1.0, seed=0):
        report = check_poem(p.text, rhyme=rhyme, tones="strict", readings=spec.readings)
        assert report.ok and report.form == form, (p.text, report.violations)


def test_sample_from_any_directory_uses_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    monkeypatch.delenv("POETGEN_CHECKPOINT", raising=False)
    r = CliRunner().invoke(cli, ["sample", "--form", "七绝", "--rhyme", "pingshui", "--seed", "1", "--json"])
    assert r.exit_code == 0, r.output
    poem = json.loads(r.stdout)
    assert check_poem(poem["text"]).ok
    info = json.loads(CliRunner().invoke(cli, ["info", "default", "--json"]).stdout)
    assert info["checkpoint"].endswith("tang.safetensors")


@pytest.mark.skipif(not (SHARED / "corpora" / "tang_val.txt").exists(), reason="needs ../shared/corpora/tang_val.txt")
def test_bundled_model_quality_on_val():
    r = CliRunner().invoke(cli, ["eval", "default", str(SHARED / "corpora" / "tang_val.txt"), "--json"])
    assert r.exit_code == 0, r.output
    reported = read_meta(BUNDLED)["training"]["best_val_bpc"]
    assert json.loads(r.stdout)["bpc"] == pytest.approx(reported, abs=0.02)  # float16 costs < 0.02

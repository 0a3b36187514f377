"""The fault battery as properties (hypothesis).

Whatever bytes a checkpoint holds, whatever a (validly signed) header says, whatever bytes a
corpus holds, poetgen either reads it correctly or raises one PoetgenError with a one-line
message: never another exception (a traceback for the user), never a silent change.
The example counts are bounded so that the whole file runs in a few seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poetgen.app.cli import cli
from poetgen.errors import CorpusError, PoetgenError
from poetgen.lm.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from poetgen.lm.config import ModelConfig, to_dict
from poetgen.lm.corpus import Vocab, iter_text
from poetgen.lm.model import CharLSTM

from conftest import edit_header

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A `best`-like checkpoint and a `last`-like one with training state, as bytes."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz")
    vocab = Vocab.build("不知春江花月夜\n，。")
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), hidden_size=8, embed_size=4,
                                 num_layers=2, cutoffs=()))
    meta = {"train_config": {"lr": 0.01, "batch_size": 2},
            "training": {"step": 7, "elapsed": 1.5, "best_val_bpc": 3.2, "val_bpc": None,
                         "corpus": "abc", "epochs": 0.5, "train_chars": 100}, "init": None}
    extra = {"optim.0.exp_avg": torch.randn(4, 3), "optim.0.step": torch.tensor(7.0),
             "rng": torch.get_rng_state()[:64].clone()}
    best = save_checkpoint(folder / "best.safetensors", model, vocab, meta).read_bytes()
    last = save_checkpoint(folder / "last.safetensors", model, vocab, meta, extra).read_bytes()
    return {"best": best, "last": last, "dir": folder, "model": model, "vocab": vocab}


def _load(path):
    ck = load_checkpoint(path, with_extra=True)
    ck.model(torch.zeros(3, 1, dtype=torch.long), ck.model.start_state(1))  # and it runs
    return ck


def _one_clear_error(e: PoetgenError) -> None:
    assert isinstance(e, PoetgenError), f"{type(e).__name__}: {e}"
    assert str(e) and "\n" not in str(e)


# ----------------------------------------------------------------------------------------------
# Checkpoint bytes


@st.composite
def mutated(draw, data: bytes):
    n = 8 + int.from_bytes(data[:8], "little")
    region = draw(st.sampled_from(["header", "data", "anywhere"]))
    lo, hi = {"header": (0, n), "data": (n, len(data)), "anywhere": (0, len(data))}[region]
    at = draw(st.integers(lo, hi - 1))
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "append",
                                 "length"]))
    if kind == "flip":
        out = bytearray(data)
        out[at] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "overwrite":
        patch = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + patch + data[at + len(patch):]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 16)):]
    if kind == "truncate":
        return data[:at]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=16))
    return draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little") + data[8:]


@FUZZ
@given(st.data())
def test_changed_checkpoint_bytes_are_refused_never_loaded(files, data):
    kind = data.draw(st.sampled_from(["best", "last"]))
    original = files[kind]
    changed = data.draw(mutated(original))
    path = files["dir"] / f"fuzz-{kind}.safetensors"
    path.write_bytes(changed)
    try:
        ck = _load(path)
    except PoetgenError as e:
        _one_clear_error(e)
        assert changed != original
        return
    assert changed == original, "a changed file loaded"
    for k, v in files["model"].state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v)


# ----------------------------------------------------------------------------------------------
# Headers that parse and carry a valid checksum, but say anything (a buggy writer)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                         allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["", "\ufffd", "春", 0, 1, 2, 8, 16, -1]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)

# Where in the header a value is replaced: top-level keys, every config and training field,
# a vocabulary entry, the tensor table.
PLACES = ([("meta", k) for k in ("format", "config", "vocab", "train_config", "training", "init",
                                 "dtype", "exported_from")]
          + [("meta", "config", f) for f in to_dict(ModelConfig())]
          + [("meta", "training", f) for f in ("step", "elapsed", "best_val_bpc", "val_bpc",
                                               "corpus", "epochs", "eval_pending", "lr",
                                               "peak_lr", "chars_per_s", "loss_sum",
                                               "loss_steps")]
          + [("meta", "train_config", f) for f in ("lr", "batch_size", "unknown_setting")]
          + [("meta", "vocab", 0), ("meta", "vocab", -1), ("meta", "init", "from")]
          + [("table", "model.embedding.weight", f) for f in ("dtype", "shape", "data_offsets")]
          + [("table", "extra.rng", f) for f in ("dtype", "shape")])


def _signed(data: bytes, meta: dict, table_change) -> bytes:
    """`data` with its poetgen metadata replaced by `meta`, re-signed."""
    return edit_header(data, lambda m: (m.clear(), m.update(meta)), table_change)


def _put(target, keys, value):
    for k in keys[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(k, {})
        elif isinstance(target, list) and target:
            target = target[k % len(target)]
        else:
            return
    if isinstance(target, dict):
        if value is _DELETE:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    elif isinstance(target, list) and target and isinstance(keys[-1], int):
        target[keys[-1] % len(target)] = None if value is _DELETE else value


_DELETE = object()


@FUZZ
@given(st.data())
def test_any_signed_header_loads_as_written_or_is_refused(files, data):
    kind = data.draw(st.sampled_from(["best", "last"]))
    original = files[kind]
    n = int.from_bytes(original[:8], "little")
    meta = json.loads(json.loads(original[8:8 + n])["__metadata__"]["poetgen"])
    changes = data.draw(st.lists(st.tuples(st.sampled_from(PLACES),
                                           json_values | st.just(_DELETE)), min_size=1,
                                 max_size=3))
    table_changes = []
    for place, value in changes:
        if place[0] == "meta":
            _put(meta, list(place[1:]), value)
        else:
            table_changes.append((place[1:], value))

    def change_table(header):
        for keys, value in table_changes:
            _put(header, list(keys), value)

    path = files["dir"] / f"signed-{kind}.safetensors"
    path.write_bytes(_signed(original, meta, change_table))
    try:
        ck = _load(path)
        check_resumable(ck.meta, path)
    except PoetgenError as e:
        _one_clear_error(e)
        return
    # It loaded: then it is exactly what the header says, and every command can show it.
    assert ck.meta == meta
    assert list(ck.vocab.chars) == meta["vocab"]
    # (a config without text_kind is from before that field: "lines", as config.py documents)
    assert to_dict(ck.model.config) == {**to_dict(ModelConfig(text_kind="lines")), **meta["config"]}
    r = CliRunner().invoke(cli, ["info", str(path)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["info", str(path), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["training"] == meta.get("training", {})


# ----------------------------------------------------------------------------------------------
# Corpus bytes

corpus_bytes = st.one_of(
    st.binary(max_size=40),
    st.lists(st.one_of(st.text(alphabet="春江\r\n a\ufeff🌙", max_size=6).map(str.encode),
                       st.sampled_from([b"\xff", b"\xe6", b"\xe6\x98", b"\x80", b"\xc0\xaf",
                                        b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])),
             max_size=10).map(b"".join))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=corpus_bytes, chunk=st.integers(1, 9))
def test_corpus_bytes_decode_exactly_or_the_first_bad_byte_is_named(tmp_path, raw, chunk):
    path = tmp_path / "c.txt"
    path.write_bytes(raw)
    try:
        expected = raw.decode("utf-8")
    except UnicodeDecodeError as reference:
        with pytest.raises(CorpusError) as e:
            list(iter_text(path, chunk_bytes=chunk))
        _one_clear_error(e.value)
        line = raw[:reference.start].count(b"\n") + 1
        assert f"at byte {reference.start} (line {line}" in str(e.value)
        assert f"(byte 0x{raw[reference.start]:02x})" in str(e.value)
        return
    if expected.startswith("\ufeff"):
        expected = expected[1:]
    expected = expected.replace("\r\n", "\n").replace("\r", "\n")
    assert "".join(iter_text(path, chunk_bytes=chunk)) == expected


def test_a_signed_header_with_sound_values_loads_as_written(files):
    """The header property above is not vacuous: sound changes do load, and show."""
    original = files["last"]
    n = int.from_bytes(original[:8], "little")
    meta = json.loads(json.loads(original[8:8 + n])["__metadata__"]["poetgen"])
    meta["training"]["step"] = 8
    meta["config"]["dropout"] = 0.25
    meta["exported_from"] = "春.safetensors"
    path = files["dir"] / "sound.safetensors"
    path.write_bytes(_signed(original, meta, lambda header: None))
    ck = _load(path)
    assert ck.meta == meta and ck.model.config.dropout == 0.25


# ----------------------------------------------------------------------------------------------
# A resume from any signed header: the run state a resume restores (step, losses, RNG, carried
# state, optimizer moments) trains on, or is refused in one line


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_text):
    from conftest import TINY_MODEL, TINY_TRAIN
    from poetgen.lm.config import TrainConfig
    from poetgen.lm.corpus import encode_tensor
    from poetgen.lm.train import train

    folder = tmp_path_factory.mktemp("resume")
    vocab = Vocab.build(tiny_text)
    ids = encode_tensor(vocab, tiny_text)
    config = TrainConfig(**{**TINY_TRAIN, "max_steps": 4, "eval_every": 2})
    train(ids, ids[:100], vocab, ModelConfig(**TINY_MODEL), config, folder)
    return {"dir": folder, "ids": ids, "vocab": vocab, "config": config,
            "last": (folder / "last.safetensors").read_bytes(),
            "metrics": (folder / "metrics.csv").read_bytes()}


RESUME_PLACES = ([("meta", "training", f) for f in ("step", "elapsed", "best_val_bpc", "val_bpc",
                                                    "eval_pending", "lr", "peak_lr",
                                                    "chars_per_s", "loss_sum", "loss_steps",
                                                    "corpus")]
                 + [("meta", "train_config", f) for f in ("batch_size", "lr", "min_evals")]
                 + [("table", name, f) for name in ("extra.rng", "extra.train_h",
                                                    "extra.optim.0.exp_avg", "extra.optim.0.step")
                    for f in ("dtype", "shape")])


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_a_resume_from_any_signed_header_trains_on_or_is_refused(short_run, data):
    from poetgen.lm.config import TrainConfig
    from poetgen.lm.train import train

    changes = data.draw(st.lists(st.tuples(st.sampled_from(RESUME_PLACES), json_values),
                                 min_size=1, max_size=2))
    meta_changes = [(p[1:], v) for p, v in changes if p[0] == "meta"]
    table_changes = [(p[1:], v) for p, v in changes if p[0] == "table"]

    def change_meta(meta):
        for keys, value in meta_changes:
            _put(meta, list(keys), value)

    def change_table(header):
        for keys, value in table_changes:
            _put(header, list(keys), value)

    run_dir = short_run["dir"]
    (run_dir / "last.safetensors").write_bytes(
        edit_header(short_run["last"], change_meta, change_table))
    (run_dir / "metrics.csv").write_bytes(short_run["metrics"])
    config = TrainConfig(**{**short_run["config"].__dict__, "max_steps": 6})
    try:
        result = train(short_run["ids"], short_run["ids"][:100], short_run["vocab"],
                       ModelConfig(), config, run_dir, resume=True)
    except PoetgenError as e:
        _one_clear_error(e)
        return
    # It trained on: `last` is a loadable checkpoint of where the run stands, and every metrics
    # row is of a step up to it, each once.
    last = load_checkpoint(run_dir / "last.safetensors", with_extra=True)
    assert last.meta["training"]["step"] == result.steps
    steps = [int(line.split(",")[0]) for line in
             (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and all(s <= result.steps for s in steps)

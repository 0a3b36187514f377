"""Checkpoints: round trips, the whole-file checksum, header validation, old-format files,
file-system faults. tests/test_fuzz.py throws random bytes and headers at the same loader."""

import errno
import json
import os

import pytest
import torch
from safetensors import safe_open

from poetgen import files
from poetgen.lm import checkpoint
from poetgen.lm.checkpoint import (check_resumable, load_checkpoint, read_meta, resolve,
                                   save_checkpoint)
from poetgen.lm.config import ModelConfig
from poetgen.lm.corpus import Vocab
from poetgen.errors import CheckpointError, FileSystemError, PoetgenError
from poetgen.lm.model import CharLSTM, skeleton, tensor_shapes

from conftest import rewrite_header, save_v1


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    vocab = Vocab.build("春江花月夜\n，。")
    m = CharLSTM(ModelConfig(vocab_size=len(vocab), hidden_size=16, embed_size=8, cutoffs=()))
    path = save_checkpoint(tmp_path / "m.safetensors", m, vocab, {"training": {"step": 3}})
    return path, m, vocab


def test_round_trip_gives_identical_logits(saved):
    path, m, vocab = saved
    ck = load_checkpoint(path)
    x = torch.randint(0, len(vocab), (5, 2))
    a, _ = m.eval()(x, m.start_state(2))
    b, _ = ck.model(x, ck.model.start_state(2))
    assert torch.equal(m.log_probs(a), ck.model.log_probs(b))
    assert ck.vocab == vocab and ck.meta["training"]["step"] == 3


@pytest.mark.parametrize("proj_size", [0, 8])
def test_tied_weights_round_trip_stays_tied(tmp_path, proj_size):
    torch.manual_seed(0)
    vocab = Vocab.build("春江花月夜\n，。")
    m = CharLSTM(ModelConfig(vocab_size=len(vocab), hidden_size=16, embed_size=8, softmax="full",
                             tie_weights=True, proj_size=proj_size)).eval()
    ck = load_checkpoint(save_checkpoint(tmp_path / "tied.safetensors", m, vocab, {}))
    x = torch.randint(0, len(vocab), (5, 2))
    assert torch.equal(m.log_probs(m(x, m.start_state(2))[0]),
                       ck.model.log_probs(ck.model(x, ck.model.start_state(2))[0]))
    assert ck.model.decoder.weight is ck.model.embedding.weight  # one tensor, as trained


def test_half_precision_round_trip(saved, tmp_path):
    path, m, vocab = saved
    small = save_checkpoint(tmp_path / "half.safetensors", m, vocab, {}, dtype=torch.float16)
    ck = load_checkpoint(small)
    assert small.stat().st_size < path.stat().st_size
    assert next(ck.model.parameters()).dtype == torch.float32
    assert torch.allclose(ck.model.embedding.weight, m.embedding.weight, atol=1e-3)


def test_truncated_checkpoint_is_refused(saved):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_flipped_byte_is_refused(saved):
    path = saved[0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_garbage_and_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a poetgen checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_mismatched_config_is_refused(saved):
    path = saved[0]
    rewrite_header(path, lambda m: m["config"].update(hidden_size=32))
    with pytest.raises(CheckpointError, match="do not match the model config"):
        load_checkpoint(path)


def test_mismatched_vocab_is_refused(saved):
    path = saved[0]
    rewrite_header(path, lambda m: m.update(vocab=m["vocab"][1:]))
    with pytest.raises(CheckpointError, match="vocabulary has"):
        load_checkpoint(path)


def test_other_format_is_refused(saved):
    path = saved[0]
    rewrite_header(path, lambda m: m.update(format="poetgen-checkpoint-v9"))
    with pytest.raises(CheckpointError, match="another version"):
        read_meta(path)


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "the disk is full"),
                                       (errno.EROFS, "(Read-only file system); choose a location "
                                                     "on a writable disk"),
                                       (errno.EACCES, "(Permission denied); fix the permissions")])
def test_failed_write_is_one_line_and_leaves_previous_file_intact(saved, monkeypatch, code, fix):
    path, m, vocab = saved
    before = path.read_bytes()

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(FileSystemError) as e:
        save_checkpoint(path, m, vocab, {"training": {"step": 99}})
    assert str(e.value).startswith(f"cannot write {path} (") and fix in str(e.value)
    assert "\n" not in str(e.value)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_resolve_order(tmp_path, monkeypatch, saved):
    path = saved[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POETGEN_CHECKPOINT", raising=False)
    monkeypatch.setattr(checkpoint, "BUNDLED", tmp_path / "no-bundle.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resolve(None)
    (tmp_path / "checkpoints" / "run").mkdir(parents=True)
    best = tmp_path / "checkpoints" / "run" / "best.safetensors"
    best.write_bytes(path.read_bytes())
    assert resolve(None) == best.relative_to(tmp_path)
    monkeypatch.setenv("POETGEN_CHECKPOINT", str(path))
    assert resolve(None) == path
    assert resolve(str(best.parent)) == best


# ----------------------------------------------------------------------------------------------
# The checksum covers every byte


def test_file_is_plain_safetensors_that_any_reader_opens(saved):
    path, m, vocab = saved
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {f"model.{k}" for k in m.state_dict()}
        assert torch.equal(f.get_tensor("model.embedding.weight"), m.embedding.weight)
        assert json.loads(f.metadata()["poetgen"])["format"] == checkpoint.FORMAT


def test_bytes_all_over_the_file_are_covered(saved):
    """One bit flipped at every 4th byte of the header (length, JSON, padding) and every 97th of
    the tensor data: each is refused. (tests/test_fuzz.py tries random changes.)"""
    path = saved[0]
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    positions = list(range(0, 8 + n, 4)) + list(range(8 + n, len(data), 97))
    for i in positions:
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError):
            read_meta(path)
    path.write_bytes(data)
    read_meta(path)


def _replace_in_header(path, old: bytes, new: bytes):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert len(old) == len(new) and data[8:8 + n].count(old) == 1
    path.write_bytes(data[:8 + n].replace(old, new) + data[8 + n:])


@pytest.mark.parametrize("old, new", [
    ("不".encode(), "丌".encode()),  # one bit: 不 is e4 b8 8d, 丌 is e4 b8 8c
    ('"F32"'.encode(), '"I32"'.encode()),  # the same bytes read as integers
    (b'\\"hidden_size\\": 16', b'\\"hidden_size\\": 17'),
])
def test_header_changes_the_issue_found_loaded_are_refused(tmp_path, old, new):
    vocab = Vocab.build("不知春江花月夜\n，。")
    m = CharLSTM(ModelConfig(vocab_size=len(vocab), hidden_size=16, embed_size=8, cutoffs=()))
    path = save_checkpoint(tmp_path / "m.safetensors", m, vocab, {})
    if old == '"F32"'.encode():  # the dtype of one tensor (any: they are all F32)
        data = path.read_bytes()
        at = data.index(old)
        path.write_bytes(data[:at] + new + data[at + len(new):])
    else:
        _replace_in_header(path, old, new)
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(path)


def test_swapped_vocabulary_entries_are_refused(saved):
    path = saved[0]

    def swap(meta):
        meta["vocab"][0], meta["vocab"][1] = meta["vocab"][1], meta["vocab"][0]

    rewrite_header(path, swap, sign=False)  # a tool that edits without re-signing
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_training_state_is_verified_even_when_not_loaded(saved):
    """`info`, `sample`, `eval` and `export` read only the model, yet a flip in `last`'s optimizer
    state is refused by them too: the checksum covers the whole file."""
    path, m, vocab = saved
    extra = {"optim.0.exp_avg": torch.ones(50), "rng": torch.get_rng_state()}
    last = save_checkpoint(path.parent / "last.safetensors", m, vocab, {}, extra)
    data = bytearray(last.read_bytes())
    data[-100] ^= 0x40  # in the last tensors of the file: optimizer moments (F32 sorts first)
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(last)  # with_extra=False


# ----------------------------------------------------------------------------------------------
# Format v1 (checksum over tensors only)


def test_old_format_loads_with_a_note_and_its_tensor_checksum_still_counts(saved, tmp_path):
    _, m, vocab = saved
    old = save_v1(tmp_path / "old.safetensors", m, vocab, {"training": {"step": 3}})
    ck = load_checkpoint(old)
    for k, v in m.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    assert ck.meta["training"]["step"] == 3
    assert len(ck.notes) == 1 and "old checkpoint format" in ck.notes[0] and "export" in ck.notes[0]
    data = bytearray(old.read_bytes())
    data[-5] ^= 0x01
    old.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(old)


def test_old_format_with_integer_weights_is_refused(saved, tmp_path):
    """v1 does not hash dtypes: F32 retyped as I32 keeps its tensor checksum, so the loader
    itself must refuse weights that are not floating point."""
    _, m, vocab = saved
    old = save_v1(tmp_path / "old.safetensors", m, vocab, {})
    _replace_in_header(old, b'"model.start_c":{"dtype":"F32"', b'"model.start_c":{"dtype":"I32"')
    with pytest.raises(CheckpointError, match="not as floating point"):
        load_checkpoint(old)


def test_new_file_claiming_the_old_format_is_refused(saved):
    path = saved[0]
    rewrite_header(path, lambda meta: meta.update(format="poetgen-checkpoint-v1"))
    with pytest.raises(CheckpointError, match="with a file checksum"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# Header validation (re-signed headers: what a buggy writer would produce)


def _set(*keys, value):
    def change(meta):
        target = meta
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set("config", "hidden_size", value="16"), "hidden_size must be an integer"),
    (_set("config", "hidden_size", value=16.5), "hidden_size must be an integer"),
    (_set("config", "hidden_size", value=True), "hidden_size must be an integer"),
    (_set("config", "hidden_size", value=-16), "hidden_size must be between"),
    (_set("config", "cutoffs", value="abc"), "cutoffs must be a list of integers"),
    (_set("config", "dropout", value=None), "dropout must be a finite number"),
    (_set("config", "softmax", value="sparse"), "softmax must be"),
    (_set("config", "layer_norm", value=True), "newer version"),
    (_set("config", value=[]), "config is missing"),
    (_set("vocab", value=[1, 2, 3]), "vocab is not a list of single characters"),
    (_set("vocab", value="春江"), "vocab is not a list of single characters"),
    (_set("vocab", 0, value="春江"), "vocab is not a list of single characters"),
    (lambda m: m["vocab"].__setitem__(0, m["vocab"][1]), "distinct characters"),
    (_set("init", value={"from": 3}), "init is not"),
    (_set("init", value="elsewhere"), "init is not"),
    (_set("training", value=[]), "training is not an object"),
    (_set("training", "step", value=-1), "training.step"),
    (_set("training", "step", value="3"), "training.step"),
    (_set("train_config", value={"lr": "fast"}), "lr must be a finite number"),
    (_set("dtype", value=16), "dtype is not a string"),
])
def test_wrong_header_fields_are_refused_in_one_line(saved, change, message):
    path = saved[0]
    rewrite_header(path, change)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("poetgen_json, message", [
    ("[1, 2]", "not a JSON object"),
    ('"a string"', "not a JSON object"),
    ("null", "not a JSON object"),
    ("[" * 1000 + "]" * 1000, "nests more than|not valid JSON"),
    ('{"format": "poetgen-checkpoint-v2", "config": {"hidden_size": 1e400}}', "not a finite"),
    ('{"format": "poetgen-checkpoint-v2", "config": {"hidden_size": Infinity}}', "not JSON"),
    ('{"format": "poetgen-checkpoint-v2", "x": ' + "[" * 40 + "]" * 40 + "}", "nests more than"),
])
def test_metadata_that_is_not_an_object_is_refused(saved, poetgen_json, message):
    path = saved[0]
    rewrite_header(path, change_header=lambda h: h["__metadata__"].update(poetgen=poetgen_json))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("change, message", [
    (lambda h: h["model.start_c"].update(dtype="I32"), "not as floating point"),
    (lambda h: h["model.embedding.weight"].update(shape=[8, 9]), "embedding.weight has shape"),
    (lambda h: h["model.start_c"].update(data_offsets=[0, 64]), "does not start where|needs"),
    (lambda h: h["model.start_c"].update(shape=[1, 1, 17]), "needs"),
    (lambda h: h["model.start_c"].update(dtype="Q8"), "unknown dtype"),
    (lambda h: h.update({"weird": h.pop("model.start_c")}), "no poetgen checkpoint has"),
    (lambda h: h.update({"model.lstm.extra": h.pop("model.start_c")}), "missing start_c"),
])
def test_tensor_table_is_checked(saved, change, message):
    path = saved[0]
    rewrite_header(path, change_header=change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_lying_header_is_refused_before_any_weight_is_allocated(saved, monkeypatch):
    """A 362 KB file claiming hidden_size 8000 used to allocate 2.1 GB (80 s) before failing."""
    path = saved[0]
    rewrite_header(path, _set("config", "hidden_size", value=200_000))
    monkeypatch.setattr(checkpoint, "allocate", lambda *a: pytest.fail("allocated a model"))
    with pytest.raises(CheckpointError, match="has shape .*the config needs"):
        load_checkpoint(path)


def test_skeleton_shapes_are_the_real_models(saved):
    """The shapes checked on load come from a meta-device model: they must be the real ones."""
    for config in [ModelConfig(vocab_size=50, cutoffs=(10, 30), proj_size=64, num_layers=2),
                   ModelConfig(vocab_size=50, softmax="full", tie_weights=True, embed_size=32),
                   ModelConfig(vocab_size=50, softmax="full", tie_weights=True, proj_size=48)]:
        real = CharLSTM(config)
        shapes = {k: tuple(v.shape) for k, v in real.state_dict().items()
                  if k not in real.tied_names()}
        assert tensor_shapes(skeleton(config)) == shapes


def test_resume_needs_the_run_state_and_known_settings(saved):
    path = saved[0]
    meta = {"train_config": {"lr": 0.1}, "training": {"step": 3, "elapsed": 1.0,
                                                      "best_val_bpc": None, "corpus": "x"}}
    check_resumable(meta, path)
    with pytest.raises(CheckpointError, match="newer|does not know.*warmup_shape"):
        check_resumable({**meta, "train_config": {"warmup_shape": "linear"}}, path)
    with pytest.raises(CheckpointError, match="step missing"):
        check_resumable({**meta, "training": {"elapsed": 1.0, "best_val_bpc": None,
                                              "corpus": "x"}}, path)


def test_non_finite_weights_are_never_written(saved):
    path, m, vocab = saved
    before = path.read_bytes()
    with torch.no_grad():
        m.embedding.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or infinity.*left as it was"):
        save_checkpoint(path, m, vocab, {})
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# Paths that are not checkpoints


def test_paths_that_are_not_files_get_one_line(tmp_path):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "gone.safetensors")
    for path, message in [("/dev/zero", "not a regular file"),
                          (loop, "symbolic link loop"),
                          (dangling, "which does not exist; fix the link"),
                          (tmp_path, "holds no best.safetensors or last.safetensors; give a run directory")]:
        with pytest.raises(PoetgenError, match=message):
            load_checkpoint(path)


def test_write_below_a_file_names_the_file(saved, tmp_path):
    path, m, vocab = saved
    blocker = tmp_path / "run"
    blocker.write_text("not a directory")
    with pytest.raises(FileSystemError, match=f"{blocker} is a file where a directory is needed"):
        save_checkpoint(blocker / "sub" / "best.safetensors", m, vocab, {})


def test_stale_temporaries_are_found(saved):
    path = saved[0]
    stale = path.parent / f".{path.name}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert files.stale_temporaries(path.parent) == [stale]

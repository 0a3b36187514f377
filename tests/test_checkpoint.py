import json
import struct

import pytest
import torch

from poetgen.lm import checkpoint
from poetgen.lm.checkpoint import load_checkpoint, read_meta, resolve, save_checkpoint
from poetgen.lm.config import ModelConfig
from poetgen.lm.corpus import Vocab
from poetgen.errors import CheckpointError
from poetgen.lm.model import CharLSTM


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


def _rewrite_meta(path, change):
    """Edit the JSON header in place (as a tamperer or a buggy tool would)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["poetgen"])
    change(meta)
    header["__metadata__"]["poetgen"] = json.dumps(meta, ensure_ascii=False)
    raw = json.dumps(header, ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_mismatched_config_is_refused(saved):
    path = saved[0]
    _rewrite_meta(path, lambda m: m["config"].update(hidden_size=32))
    with pytest.raises(CheckpointError, match="do not match the model config"):
        load_checkpoint(path)


def test_mismatched_vocab_is_refused(saved):
    path = saved[0]
    _rewrite_meta(path, lambda m: m.update(vocab=m["vocab"][1:]))
    with pytest.raises(CheckpointError, match="vocabulary has"):
        load_checkpoint(path)


def test_other_format_is_refused(saved):
    path = saved[0]
    _rewrite_meta(path, lambda m: m.update(format="poetgen-checkpoint-v9"))
    with pytest.raises(CheckpointError, match="another version"):
        read_meta(path)


def test_failed_write_leaves_previous_file_intact(saved, monkeypatch):
    path, m, vocab = saved
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, m, vocab, {"training": {"step": 99}})
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

"""Checkpoints: one safetensors file holding weights, and JSON metadata in its header.

    run/best.safetensors   model weights + start state; header: config, vocabulary, history
    run/last.safetensors   the same, plus optimizer moments, the carried LSTM state and the RNG
                           state, so `--resume` continues exactly where the run stopped

Why one file: a checkpoint is replaced with a single atomic `os.replace`, so an interrupted write
can never leave weights and metadata from different steps. Why safetensors + JSON: loading parses
plain data and never executes code from the file (unlike pickle / `torch.load(weights_only=False)`).

Integrity. The header holds a SHA-256 of every byte of the file, with the 64 hex digits of the
checksum itself counted as zeros ("0" * 64). Every load by every command checks it before it
believes anything the file says, so a flipped bit anywhere (vocabulary, config, a dtype, the
optimizer state, padding) is refused, never loaded. It is one hash over bytes already read, a few
milliseconds for the bundled model. Then the header is checked field by field (types, ranges, the
tensor table) and the model is sized from the tensors' shapes before anything is allocated, so a
header that lies costs milliseconds, not gigabytes.

Format v1 (before the whole-file checksum) hashed only tensor names and bytes. Such files still
load, with a note (`Checkpoint.notes`) saying that their header is unprotected and how to rewrite
them; a v2 file whose format field was flipped to v1 has no v1 hash and is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from poetgen.errors import CheckpointError, ConfigError, file_error
from poetgen.files import atomic_write_bytes
from poetgen.lm.config import (ModelConfig, TrainConfig, check_types, model_config_from_dict,
                               to_dict)
from poetgen.lm.corpus import Vocab, input_file
from poetgen.lm.model import CharLSTM, allocate, skeleton, tensor_shapes

FORMAT = "poetgen-checkpoint-v2"
FORMAT_V1 = "poetgen-checkpoint-v1"  # checksum over tensors only; loaded with a note
CHECKSUM_KEY = "poetgen_sha256"  # in the safetensors metadata, next to "poetgen" (the JSON meta)
ENV_VAR = "POETGEN_CHECKPOINT"
BUNDLED = Path(__file__).parents[1] / "data" / "tang.safetensors"  # the `default` model, if installed

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_META_DEPTH = 16  # our metadata nests 3 deep; anything deeper was not written by poetgen
# safetensors' dtype names. Weights are floating point; `rng` is bytes.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass
class Checkpoint:
    model: CharLSTM
    vocab: Vocab
    meta: dict  # everything in the JSON header: config, train_config, training, history
    path: Path
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # training state, if loaded
    sha256: str = ""  # the file's checksum (v1: of its tensors), as recorded and verified
    notes: tuple[str, ...] = ()  # things the user should know, e.g. an old format


# ----------------------------------------------------------------------------------------------
# Writing


def encode(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    """The bytes of a checkpoint: a safetensors file whose header carries `meta` and the checksum.

    Written here rather than by safetensors so that the exact header bytes, which the checksum
    covers, are ours. Any safetensors reader still reads the file.
    """
    # Widest dtype first (as safetensors does): every tensor then starts at a multiple of its size.
    names = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    table, blobs, offset = {}, [], 0
    for name in names:
        t = tensors[name].detach().cpu().contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        table[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    metadata = {"poetgen": json.dumps(meta, ensure_ascii=False, allow_nan=False),
                CHECKSUM_KEY: "0" * 64}
    header = json.dumps({"__metadata__": metadata, **table}, ensure_ascii=False,
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the tensor data starts 8-byte aligned
    data = bytearray(len(header).to_bytes(8, "little") + header + b"".join(blobs))
    digest = hashlib.sha256(data).hexdigest()
    at = data.index(_checksum_field("0" * 64))
    data[at : at + len(_checksum_field(digest))] = _checksum_field(digest)
    return bytes(data)


def _checksum_field(hexdigest: str) -> bytes:
    # The quotes make it unique in the header: inside the JSON-encoded metadata string every quote
    # is escaped, and a tensor name is followed by `:{`, not `:"`.
    return f'"{CHECKSUM_KEY}":"{hexdigest}"'.encode()


def save_checkpoint(path: str | Path, model: CharLSTM, vocab: Vocab, meta: dict,
                    extra: dict[str, torch.Tensor] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Atomically write model (+ optional training-state tensors) and `meta` to `path`.

    `dtype` (e.g. torch.float16) stores floating-point weights at lower precision for release;
    they are cast back to float32 on load. Weights or state holding NaN or infinity are never
    written (CheckpointError; the file at `path` is left as it was).
    """
    path = Path(path)
    tensors = {}
    aliases = model.tied_names()
    for name, t in model.state_dict().items():
        if name in aliases:
            continue
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[f"model.{name}"] = t
    for name, t in (extra or {}).items():
        tensors[f"extra.{name}"] = t.detach().cpu()
    poisoned = [n for n, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if poisoned:
        raise CheckpointError(f"{path}: not written: {poisoned[0]} holds NaN or infinity"
                              f"{' (or overflows ' + str(dtype) + ')' if dtype else ''}; "
                              f"the file is left as it was")
    header = dict(meta, format=FORMAT, config=to_dict(model.config), vocab=list(vocab.chars))
    header.pop("sha256", None)  # v1's tensor hash; v2's checksum lives next to the metadata
    atomic_write_bytes(path, encode(tensors, header))
    return path


# ----------------------------------------------------------------------------------------------
# Reading: checksum, then header, then shapes, then the model


@dataclass
class _Verified:
    """A checkpoint file whose checksum, header fields and tensor table passed every check."""

    meta: dict
    config: ModelConfig
    vocab: Vocab
    table: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]  # name -> dtype, shape, span
    data: memoryview  # the tensor bytes
    sha256: str
    notes: tuple[str, ...]

    def tensor(self, name: str) -> torch.Tensor:
        dtype, shape, start, end = self.table[name]
        if start == end:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(self.data[start:end]), dtype=dtype).reshape(shape)


def _read(path: Path) -> _Verified:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise file_error(path, e, "read") from None

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {why}); "
                               "restore it from a copy or train again")

    if len(data) < 8:
        raise corrupt(f"{len(data)} bytes, shorter than any safetensors file")
    n = int.from_bytes(data[:8], "little")
    if not 2 <= n <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise corrupt(f"a header of {n:,} bytes does not fit in {len(data):,}")
    header = _parse_json(data[8 : 8 + n], corrupt, "the safetensors header")
    if not isinstance(header, dict):
        raise corrupt("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("poetgen"), str):
        raise CheckpointError(f"{path}: a safetensors file, but not a poetgen checkpoint "
                              "(no poetgen metadata)")
    buffer = memoryview(data)[8 + n :]
    table = _tensor_table(header, len(buffer), corrupt)  # tells a truncated file by its sizes
    checksum = metadata.get(CHECKSUM_KEY)
    if checksum is not None:  # nothing the header says is used before this passes
        _verify_checksum(data, n, checksum, path, corrupt)
    meta = _parse_json(metadata["poetgen"], corrupt, "the poetgen metadata")
    if not isinstance(meta, dict):
        raise corrupt("the poetgen metadata is not a JSON object")
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"{path}: checkpoint format {repr(fmt)[:60]} is not {FORMAT!r}; "
                              "it was written by another version of poetgen")
    if (fmt == FORMAT) != (checksum is not None):
        raise corrupt(f"a {fmt} header {'without' if checksum is None else 'with'} a file checksum")
    notes: tuple[str, ...] = ()
    if fmt == FORMAT_V1:
        checksum = meta.get("sha256")
        if _v1_digest(table, buffer) != checksum:
            raise CheckpointError(f"{path}: checkpoint data does not match its checksum (the file "
                                  "is corrupt); restore it from a copy or train again")
        notes = (f"{path} is in the old checkpoint format (v1), whose checksum covers the weights "
                 f"but not the header (vocabulary, config); rewrite it with `poetgen export {path} "
                 "NEW.safetensors` (a training run rewrites `last` at its next save)",)
    config, vocab = _check_meta(meta, path)
    return _Verified(meta, config, vocab, table, buffer, checksum, notes)


def _parse_json(raw: bytes | str, corrupt, what: str):
    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is not a finite number")
        return value

    def no_constant(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw, parse_float=finite, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError included
        raise corrupt(f"{what} is not valid JSON: {str(e)[:100]}") from None
    if _depth(value) > MAX_META_DEPTH:
        raise corrupt(f"{what} nests more than {MAX_META_DEPTH} levels deep")
    return value


def _depth(value) -> int:
    """How deeply lists and objects nest (iteratively: a hostile header must not recurse)."""
    deepest, todo = 0, deque([(value, 1)])
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_META_DEPTH:
                break
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _verify_checksum(data: bytes, n: int, checksum, path: Path, corrupt) -> None:
    if not (isinstance(checksum, str) and re.fullmatch(r"[0-9a-f]{64}", checksum)):
        raise corrupt("its checksum is not 64 hex digits")
    mark = _checksum_field(checksum)
    header = memoryview(data)[8 : 8 + n]
    at = bytes(header).find(mark)
    if at < 0 or bytes(header).find(mark, at + 1) >= 0:
        raise corrupt("its checksum field is not where it belongs")
    at += 8
    h = hashlib.sha256()
    h.update(memoryview(data)[:at])
    h.update(_checksum_field("0" * 64))
    h.update(memoryview(data)[at + len(mark) :])
    if h.hexdigest() != checksum:
        raise CheckpointError(f"{path}: the file does not match its checksum (it is corrupt: some "
                              "byte changed after it was written); restore it from a copy or "
                              "train again")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_table(header: dict, size: int, corrupt) -> dict:
    """Each tensor's dtype, shape and byte span, checked to tile the data exactly."""
    table = {}
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise corrupt(f"tensor {name!r} is not described by dtype, shape and data_offsets")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape, span = entry["shape"], entry["data_offsets"]
        if dtype is None:
            raise corrupt(f"tensor {name!r} has unknown dtype {entry['dtype']!r}")
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(_is_int(d) and 0 <= d <= size for d in shape)):
            raise corrupt(f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(span, list) and len(span) == 2 and all(map(_is_int, span))
                and 0 <= span[0] <= span[1] <= size):
            raise corrupt(f"tensor {name!r} has data_offsets {span!r}")
        if span[1] - span[0] != math.prod(shape) * dtype.itemsize:
            raise corrupt(f"tensor {name!r}: {entry['dtype']} {shape} needs "
                          f"{math.prod(shape) * dtype.itemsize} bytes, not {span[1] - span[0]}")
        table[name] = (dtype, tuple(shape), span[0], span[1])
    end = 0
    for name, (_, _, start, stop) in sorted(table.items(), key=lambda kv: kv[1][2:]):
        if start != end:
            raise corrupt(f"tensor {name!r} does not start where the one before it ends")
        end = stop
    if end != size:
        raise corrupt(f"the tensors cover {end:,} of {size:,} data bytes")
    return table


def _v1_digest(table: dict, buffer: memoryview) -> str:
    """Format v1's checksum: tensor names and bytes in name order (the header is not covered)."""
    h = hashlib.sha256()
    for name in sorted(table):
        _, _, start, end = table[name]
        h.update(name.encode())
        h.update(buffer[start:end])
    return h.hexdigest()


def _check_meta(meta: dict, path: Path) -> tuple[ModelConfig, Vocab]:
    """Every field of the metadata this version reads, by type and range, before any is used."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: checkpoint metadata is invalid ({what}); the file was "
                               "edited or written by another program; use another checkpoint")

    config = meta.get("config")
    if not isinstance(config, dict):
        raise bad("config is missing")
    unknown = sorted(set(config) - {f for f in to_dict(ModelConfig())})
    if unknown:
        raise CheckpointError(f"{path}: the model has setting(s) this version of poetgen does not "
                              f"know ({', '.join(map(str, unknown))}); it was written by a newer "
                              "version: use that one")
    try:
        model_config = model_config_from_dict(check_types(ModelConfig, config, "config"))
        model_config.validate()
        if "train_config" in meta:
            if not isinstance(meta["train_config"], dict):
                raise ConfigError("train_config is not an object")
            check_types(TrainConfig, meta["train_config"], "train_config")
    except ConfigError as e:
        raise bad(str(e)) from None
    chars = meta.get("vocab")
    if not (isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1 for c in chars)):
        raise bad("vocab is not a list of single characters")
    try:
        vocab = Vocab.from_list(chars)
    except ValueError as e:
        raise bad(f"vocab: {e}") from None
    if model_config.vocab_size != len(vocab):
        raise CheckpointError(f"{path}: vocabulary has {len(vocab)} characters but the model "
                              f"expects {model_config.vocab_size}; the checkpoint is inconsistent")
    training = meta.get("training", {})
    if not isinstance(training, dict):
        raise bad("training is not an object")
    # What training writes (train._Checkpoints._meta), and a resume reads back.
    counts = ("step", "train_chars", "loss_steps", "world_size")
    amounts = ("elapsed", "epochs", "lr", "peak_lr", "chars_per_s", "loss_sum")
    scores = ("best_val_bpc", "val_bpc")  # null before the first evaluation
    if not isinstance(training.get("eval_pending", False), bool):
        raise bad("training.eval_pending is not true or false")
    for key in counts + amounts + scores:
        if key not in training:
            continue
        v = training[key]
        ok = (_is_int(v) if key in counts else
              isinstance(v, (int, float)) and not isinstance(v, bool)
              or (v is None and key in scores))
        if not ok or (v is not None and v < 0):
            raise bad(f"training.{key} is {v!r}")
    if "corpus" in training and not isinstance(training["corpus"], str):
        raise bad("training.corpus is not a string")
    init = meta.get("init")
    if init is not None and not (
            isinstance(init, dict) and isinstance(init.get("from"), str)
            and isinstance(init.get("sha256"), (str, type(None)))
            and (init.get("step") is None or _is_int(init.get("step")))):
        raise bad("init is not {from, sha256, step}")
    for key in ("dtype", "exported_from"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(f"{key} is not a string")
    return model_config, vocab


def check_resumable(meta: dict, path: str | Path) -> None:
    """What `--resume` needs beyond a loadable model: where the run stood, and training settings
    that this version knows (a newer version may have added some)."""
    training = meta.get("training")
    missing = [k for k in ("step", "elapsed", "best_val_bpc", "corpus")
               if not isinstance(training, dict) or k not in training]
    if missing or not isinstance(meta.get("train_config"), dict):
        what = ", ".join(missing) or "train_config"
        raise CheckpointError(f"{path}: holds no resumable run ({what} missing); start a new run, "
                              "with --init to keep its weights")
    unknown = sorted(set(meta["train_config"]) - set(to_dict(TrainConfig())))
    if unknown:
        raise CheckpointError(f"{path}: the run has training setting(s) this version of poetgen "
                              f"does not know ({', '.join(unknown)}); resume it with the version "
                              "that wrote it, or start a new run with --init")


@dataclass
class Header:
    """What a checkpoint says about itself, verified (checksum and fields; no model is built)."""

    meta: dict
    sha256: str
    notes: tuple[str, ...]
    path: Path


def read_header(path: str | Path) -> Header:
    path = _existing(path)
    f = _read(path)
    return Header(f.meta, f.sha256, f.notes, path)


def read_meta(path: str | Path) -> dict:
    """The JSON header of a verified checkpoint (checksum and fields; no model is built)."""
    return read_header(path).meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    with_extra: bool = False) -> Checkpoint:
    """Load and validate a checkpoint: checksum, header fields, shapes, finiteness.

    `with_extra` also returns the training state (optimizer moments, carried state, RNG).
    """
    path = _existing(path)
    f = _read(path)
    weights = {n[len("model."):]: n for n in f.table if n.startswith("model.")}
    strays = [n for n in f.table if not n.startswith(("model.", "extra."))]
    if strays:
        raise CheckpointError(f"{path}: holds tensor {strays[0]!r}, which no poetgen checkpoint "
                              "has; use another checkpoint")
    model = skeleton(f.config)  # shapes only, no memory: a header that lies costs nothing
    problem = _shape_mismatch(tensor_shapes(model), {k: f.table[n][1] for k, n in weights.items()})
    if problem:
        raise CheckpointError(f"{path}: weights do not match the model config ({problem}); "
                              "the checkpoint is inconsistent")
    not_float = [n for n in weights.values() if not f.table[n][0].is_floating_point]
    if not_float:
        raise CheckpointError(f"{path}: weight {not_float[0]} is stored as "
                              f"{f.table[not_float[0]][0]}, not as floating point; the checkpoint "
                              "is inconsistent")
    model = allocate(model)  # the file's sizes, checked above; every value is loaded next
    state = {k: f.tensor(n).float() for k, n in weights.items()}
    for alias, source in model.tied_names().items():
        state[alias] = state[source]
    model.load_state_dict(state, strict=True)
    if not all(torch.isfinite(p).all() for p in model.state_dict().values()):
        raise CheckpointError(f"{path}: weights contain NaN or infinity; use an earlier checkpoint")
    extra = {}
    if with_extra:
        extra = {n[len("extra."):]: f.tensor(n) for n in f.table if n.startswith("extra.")}
        if not all(t.isfinite().all() for t in extra.values() if t.is_floating_point()):
            raise CheckpointError(f"{path}: the training state contains NaN or infinity; "
                                  "use an earlier checkpoint, or start again with --init")
    return Checkpoint(model.to(device).eval(), f.vocab, f.meta, path, extra, f.sha256, f.notes)


def _shape_mismatch(expected: dict[str, tuple], found: dict[str, tuple]) -> str | None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        return f"missing {missing[0]}"
    if unexpected:
        return f"unexpected {unexpected[0]}"
    for name in expected:
        if expected[name] != found[name]:
            return (f"{name} has shape {list(found[name])}, the config needs "
                    f"{list(expected[name])}")
    return None


def last_of_run(run_dir: Path) -> Path:
    """The checkpoint --resume continues: RUN/last.safetensors, which must be there."""
    last = run_dir / "last.safetensors"
    if not last.exists():
        raise CheckpointError(f"{run_dir} holds no run to resume (no {last.name}); leave out "
                              "--resume to start one there")
    return last


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():  # a run directory: prefer its best checkpoint
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        raise CheckpointError(f"{p}: directory holds no best.safetensors or last.safetensors; "
                              "give a run directory or a .safetensors file (`poetgen "
                              "checkpoints` lists those it finds)")
    return input_file(p, "no such checkpoint; check the path (`poetgen checkpoints` lists those "
                         "poetgen finds), or train one with `poetgen train CORPUS`",
                      CheckpointError)


def resolve(spec: str | None, search_dir: str | Path = "checkpoints") -> Path:
    """Which checkpoint a command means (see `choose`)."""
    return choose(spec, search_dir)[0]


def choose(spec: str | None, search_dir: str | Path = "checkpoints") -> tuple[Path, str]:
    """Which checkpoint a command means, and why (for messages: a default picked out of sight
    must be named).

    An explicit path (file or run directory); `default` for the bundled Tang model; otherwise the
    POETGEN_CHECKPOINT variable, else the newest checkpoint under ./checkpoints, else the bundled one.
    """
    if spec == "default":
        if not BUNDLED.exists():
            raise CheckpointError("the bundled `default` model is not installed; "
                                  "train one with `poetgen train CORPUS`")
        return BUNDLED, "the bundled model"
    if spec:
        return _existing(spec), "given"
    if os.environ.get(ENV_VAR):
        return _existing(os.environ[ENV_VAR]), f"${ENV_VAR}"
    found = find_checkpoints(search_dir)
    best = [p for p in found if p.name == "best.safetensors"]
    if best or found:
        return (best or found)[-1], f"the newest under {Path(search_dir)}/"
    if BUNDLED.exists():
        return BUNDLED, "the bundled model"
    raise CheckpointError(f"no checkpoint found under {search_dir}/ and ${ENV_VAR} is not set; "
                          "train one with `poetgen train CORPUS`, or name one (`default` is the "
                          "bundled Tang model)")


def find_checkpoints(search_dir: str | Path = "checkpoints") -> list[Path]:
    """Every .safetensors file under `search_dir`, oldest first (by modification time); a
    dangling link or a link loop is not a candidate (it has no time to sort by)."""
    found = []
    for p in Path(search_dir).glob("**/*.safetensors"):
        try:
            found.append((p.stat().st_mtime, p))
        except OSError:
            continue
    return [p for _, p in sorted(found, key=lambda mp: mp[0])]


__all__ = ["Checkpoint", "FORMAT", "FORMAT_V1", "BUNDLED", "ENV_VAR", "encode", "save_checkpoint",
           "Header", "read_header", "read_meta", "load_checkpoint", "check_resumable", "resolve",
           "choose", "find_checkpoints"]

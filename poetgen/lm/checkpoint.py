"""Checkpoints: one safetensors file holding weights, and JSON metadata in its header.

    run/best.safetensors   model weights + start state; header: config, vocabulary, history
    run/last.safetensors   the same, plus optimizer moments, the carried LSTM state and the RNG
                           state, so `--resume` continues exactly where the run stopped

Why one file: a checkpoint is replaced with a single atomic `os.replace`, so an interrupted write
can never leave weights and metadata from different steps. Why safetensors + JSON: loading parses
plain data and never executes code from the file (unlike pickle / `torch.load(weights_only=False)`).
A SHA-256 of the tensor bytes is kept in the header, so any corruption is caught on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from poetgen.lm.config import model_config_from_dict, to_dict
from poetgen.lm.corpus import Vocab
from poetgen.errors import CheckpointError
from poetgen.files import atomic_write_bytes
from poetgen.lm.model import CharLSTM

FORMAT = "poetgen-checkpoint-v1"
ENV_VAR = "POETGEN_CHECKPOINT"
BUNDLED = Path(__file__).parents[1] / "data" / "tang.safetensors"  # the `default` model, if installed


@dataclass
class Checkpoint:
    model: CharLSTM
    vocab: Vocab
    meta: dict  # everything in the JSON header: config, train_config, training, history
    path: Path
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # training state, if saved


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: CharLSTM, vocab: Vocab, meta: dict,
                    extra: dict[str, torch.Tensor] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Atomically write model (+ optional training-state tensors) and `meta` to `path`.

    `dtype` (e.g. torch.float16) stores floating-point weights at lower precision for release;
    they are cast back to float32 on load.
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
        tensors[f"model.{name}"] = t.contiguous()
    for name, t in (extra or {}).items():
        tensors[f"extra.{name}"] = t.detach().cpu().contiguous()
    header = dict(meta, format=FORMAT, config=to_dict(model.config), vocab=list(vocab.chars),
                  sha256=_digest(tensors))
    data = safetensors_bytes(tensors, metadata={"poetgen": json.dumps(header, ensure_ascii=False,
                                                                      allow_nan=False)})
    atomic_write_bytes(path, data)
    return path


def read_meta(path: str | Path) -> dict:
    """Only the JSON header (cheap: no tensors are read)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("poetgen")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {e}); "
                              "restore it from a copy or train again") from None
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file, but not a poetgen checkpoint "
                              "(no poetgen metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r} is not {FORMAT!r}; "
                              "it was written by another version of poetgen")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    with_extra: bool = False) -> Checkpoint:
    """Load and validate a checkpoint: format, integrity hash, vocabulary, shapes, finiteness."""
    path = _existing(path)
    meta = read_meta(path)
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name.startswith("model.") or with_extra:
                    tensors[name] = f.get_tensor(name)
            names = set(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({e}); "
                              "restore it from a copy or train again") from None
    if len(tensors) == len(names) and _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checkpoint data does not match its checksum (the file is "
                              "corrupt); restore it from a copy or train again")
    try:
        config = model_config_from_dict(meta["config"])
        vocab = Vocab.from_list(meta["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete or invalid ({e})") from None
    if config.vocab_size != len(vocab):
        raise CheckpointError(f"{path}: vocabulary has {len(vocab)} characters but the model "
                              f"expects {config.vocab_size}; the checkpoint is inconsistent")
    model = CharLSTM(config)
    state = {k[len("model."):]: v.float() if v.is_floating_point() else v
             for k, v in tensors.items() if k.startswith("model.")}
    for alias, source in model.tied_names().items():
        if source in state:
            state[alias] = state[source]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not match the model config "
                              f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckpointError(f"{path}: weights contain NaN or infinity; use an earlier checkpoint")
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return Checkpoint(model.to(device).eval(), vocab, meta, path, extra)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():  # a run directory: prefer its best checkpoint
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).exists():
                return p / name
        raise CheckpointError(f"{p}: directory holds no best.safetensors or last.safetensors")
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint; train one with `poetgen train CORPUS` "
                              "or pass --checkpoint PATH")
    return p


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
                          "train one with `poetgen train CORPUS` or pass --checkpoint PATH")


def find_checkpoints(search_dir: str | Path = "checkpoints") -> list[Path]:
    """Every .safetensors file under `search_dir`, oldest first (by modification time)."""
    return sorted(Path(search_dir).glob("**/*.safetensors"), key=lambda p: p.stat().st_mtime)

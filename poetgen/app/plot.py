"""Training curves: train and validation bits per character against steps, drawn as a PNG.

A model trained in stages (`train --init` from the run before) is drawn as one curve, each
stage after the last, with a dotted line where the next one starts.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from poetgen.errors import PoetgenError


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.csv, written by `poetgen train` at each evaluation, as
    numbers. A row that is not whole (a process killed while appending it leaves part of one; a
    resume writes it again) is left out."""
    metrics = Path(run_dir) / "metrics.csv"
    if not metrics.exists():
        raise PoetgenError(f"{metrics}: not found; plot takes the --out directory of `poetgen train`")
    try:
        with metrics.open(newline="", encoding="utf-8") as f:
            rows = [_numbers(row) for row in csv.DictReader(f)]
    except UnicodeDecodeError:
        raise PoetgenError(f"{metrics}: not UTF-8 text; is it the file `poetgen train` "
                           "wrote?") from None
    rows = [row for row in rows if row is not None]
    if not rows:
        raise PoetgenError(f"{metrics}: no evaluations logged yet")
    return rows


def _numbers(row: dict) -> dict | None:
    try:
        return {"step": int(row["step"]), "train_bpc": float(row["train_bpc"]),
                "val_bpc": float(row["val_bpc"])}
    except (KeyError, TypeError, ValueError):
        return None


def curve_png(stages: list[list[dict]], title: str) -> bytes:
    """PNG bytes of the train/val bpc curve of one or more consecutive stages."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PoetgenError("plot needs matplotlib: pip install 'poetgen[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    offset = 0
    for i, rows in enumerate(stages):
        steps = [offset + r["step"] for r in rows]
        if i:
            ax.axvline(offset, color="grey", linestyle=":", linewidth=1)
        ax.plot(steps, [r["train_bpc"] for r in rows], color="C0", alpha=0.7,
                label="train (mean since last eval)" if i == 0 else None)
        ax.plot(steps, [r["val_bpc"] for r in rows], color="C1", linewidth=2,
                label="validation" if i == 0 else None)
        offset = steps[-1]
    ax.set_xlabel("step" if len(stages) == 1 else "step (dotted: next stage)")
    ax.set_ylabel("bits per character")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

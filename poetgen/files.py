"""Atomic file writes: a file is either its old self or completely new, never half written.

Every file poetgen writes for a user (checkpoints, metrics.csv, built corpora, saved poems, plots)
goes through `atomic_open`: the data goes to a temporary file in the same directory, is flushed to
disk, and is renamed over the target with `os.replace`, which is atomic on POSIX and Windows. An
interrupted write (Ctrl-C, a full disk, a crash) leaves the old file and removes the temporary one.

A file-system fault (a full or read-only disk, no permission, a file where a directory should be)
becomes one FileSystemError that names the path and the fix, with the old file intact.

A leaf module (standard library and poetgen.errors only), so the corpus commands use it without
importing torch.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from poetgen.errors import file_error

TEMP_SUFFIX = ".tmp"  # temporary files are .NAME.RANDOM.tmp, next to NAME


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = "\n") -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; on a clean exit it replaces `path`.

    `mode` is "w" (text; `encoding` and `newline` apply) or "wb" (bytes). On an exception the
    temporary file is removed and `path` is left as it was.

    A symbolic link is written through (its target is replaced, the link stays a link), and a file
    that exists keeps its permissions: a user's private poems.txt stays private.
    """
    path, target = Path(path), Path(os.path.realpath(path))  # messages name what was given
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX,
                                   dir=target.parent)
    except OSError as e:
        raise file_error(path, e, "write") from None
    try:
        try:
            permissions = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:  # a new file: the usual permissions (mkstemp makes 0600)
            permissions = 0o666 & ~_umask()
        os.fchmod(fd, permissions)
        text = "b" not in mode
        with os.fdopen(fd, mode, encoding=encoding if text else None,
                       newline=newline if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # ENOSPC, EROFS, EISDIR (a directory where `path` goes), ...
            raise file_error(path, e, "write") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data`, all or nothing."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def stale_temporaries(directory: str | Path) -> list[Path]:
    """Temporary files that atomic_open leaves when its process is killed mid-write (kill -9,
    power loss). Remove them only while holding the directory's lock (see lm/rundir.py): a
    running writer's temporary file looks the same."""
    return sorted(p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file())


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it, so set it straight back
    os.umask(umask)
    return umask

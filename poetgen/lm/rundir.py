"""The lock on a run directory: one trainer writes to it at a time.

Two `poetgen train … --out RUN` at once would interleave their rows in metrics.csv and overwrite
each other's checkpoints. While training, the process holds an exclusive `flock` on RUN/.lock;
a second trainer is refused with the first one's PID. The operating system releases the lock
when its process ends, however it ends (kill -9 included), so a dead trainer never blocks
`--resume`. poetgen trains in one process; a version that trained in several would take this
lock in exactly one of them (rank 0), the one that writes the checkpoints.

While holding the lock, the temporary files that a killed writer left behind are removed: no
one else can be writing them then.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from poetgen.errors import RunBusyError, file_error
from poetgen.files import stale_temporaries

try:
    import fcntl
except ImportError:  # Windows: no flock; the run directory is then not locked
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(run_dir) as lock:` creates run_dir if needed and holds its lock.

    `lock.removed` lists the stale temporary files removed on entry.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.removed: list[Path] = []
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise file_error(self.run_dir if e.errno in (errno.EEXIST, errno.ENOTDIR)
                             else self.path, e, "use the run directory") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise file_error(self.path, e, "lock") from None
                who = f"PID {holder}" if holder else "another process"
                raise RunBusyError(f"{self.run_dir} is in use by another poetgen train ({who}); "
                                   "wait for it to finish or stop it, or choose another --out "
                                   "directory") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            for tmp in stale_temporaries(self.run_dir):
                tmp.unlink(missing_ok=True)
                self.removed.append(tmp)
        except OSError as e:
            os.close(fd)
            raise file_error(self.run_dir, e, "use the run directory") from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


__all__ = ["RunLock", "LOCK_NAME"]

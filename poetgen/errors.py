"""Errors a user can fix. The CLI turns each into a one-line message and a non-zero exit.

Every message says what is wrong, where, and how to fix it; core code raises these instead of
printing, so the same checks serve the CLI, the REPL and library users.
"""

from __future__ import annotations

import errno
import os


class PoetgenError(Exception):
    """Base class: a problem with the user's input, not a bug in poetgen."""


class CorpusError(PoetgenError):
    """A text file cannot be used: missing, not UTF-8, or empty."""


class CheckpointError(PoetgenError):
    """A checkpoint is missing, corrupt, or does not match what it claims to be."""


class ConfigError(PoetgenError):
    """An option or config-file value is out of range or unknown."""


class ConstraintError(PoetgenError):
    """A set of generation constraints cannot be satisfied with this model's vocabulary."""


class NonFiniteLossError(PoetgenError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left untouched."""


class RunBusyError(PoetgenError):
    """Another process is training in the same run directory (it holds the directory's lock)."""


class FileSystemError(PoetgenError):
    """A file or directory cannot be read or written: permissions, a full or read-only disk, or a
    path where a file stands in place of a directory (or the reverse)."""


# What would fix each operating-system error, by errno. The message says what failed and where;
# this says what to do about it.
_FIXES = {
    errno.ENOSPC: "the disk is full; free some space, then run the command again",
    errno.EDQUOT: "the disk quota is used up; free some space, then run the command again",
    errno.EROFS: "choose a location on a writable disk",
    errno.EACCES: "fix the permissions or choose another location",
    errno.EPERM: "fix the permissions or choose another location",
    errno.ENOENT: "check the path",
    errno.ELOOP: "it is a symbolic link loop (a link that points back at itself); fix the link",
    errno.EISDIR: "it is a directory where a file is needed; move it away or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EIO: "an input/output error: the disk may be failing; copy your files elsewhere",
    errno.EMFILE: "too many open files; close other programs or raise `ulimit -n`",
    errno.ENFILE: "too many open files on the system; close other programs",
}


def file_error(path, error: OSError, doing: str) -> FileSystemError:
    """One line for an OSError: what failed (`doing`: "write", "read", "create the directory"),
    on which path, why, and what would fix it."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path)
        fix = (f"{blocker} is a file where a directory is needed; move it away or choose another "
               "path") if blocker else "choose another path"
    else:
        fix = _FIXES.get(error.errno, "check the path and try again")
    return FileSystemError(f"cannot {doing} {path} ({reason}); {fix}")


def _file_in_the_way(path) -> str | None:
    """The nearest part of `path` (itself or a parent) that exists but is not a directory."""
    current = os.path.abspath(os.fspath(path))
    while True:
        if os.path.lexists(current) and not os.path.isdir(current):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent

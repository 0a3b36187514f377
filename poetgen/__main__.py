"""`python -m poetgen` and the `poetgen` command (pyproject's entry point).

The command line is imported and run inside a try: a Ctrl-C while click, rich and the rest load
exits with 130 and no traceback, as it does while the command runs (see app/cli.py), and so does
one that lands as the command ends, after app/cli.py's own handling is over (its work is saved).

A process that torchrun started ends with os._exit once its command is done and its output
flushed: C++ teardown at interpreter exit (a thread of the distributed runtime still joinable)
aborted such a process now and then after a finished run, in about 1 of 30 2-process runs on
a busy 2-core machine (SIGABRT, "terminate called without an active exception", no Python
frame), and torchrun then reports the whole run as failed. Every file the command wrote is
closed and synced by then (checkpoints are written atomically), so nothing is skipped but that.
"""

import os
import signal
import sys


def main() -> None:
    try:
        from poetgen.app.cli import main as run

        run()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C has nothing to stop
        _leave(130)
    except SystemExit as done:
        _leave(done.code)
    _leave(0)


def _leave(code) -> None:
    """Exit with SystemExit's `code` (None, a number, or a message): through os._exit in a
    process torchrun started for a command that trains (which has loaded lm.distributed, whose
    `launched` is the one rule for that), else as usual."""
    distributed = sys.modules.get("poetgen.lm.distributed")
    if distributed is not None and distributed.launched():
        if isinstance(code, str):  # what sys.exit does with a message
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if code is None else code)
    sys.exit(code)


if __name__ == "__main__":
    main()

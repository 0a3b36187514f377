"""`python -m poetgen` and the `poetgen` command (pyproject's entry point).

The command line is imported and run inside a try: a Ctrl-C while click, rich and the rest load
exits with 130 and no traceback, as it does while the command runs (see app/cli.py), and so does
one that lands as the command ends, after app/cli.py's own handling is over (its work is saved).
"""

import signal
import sys


def main() -> None:
    try:
        from poetgen.app.cli import main as run

        run()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C has nothing to stop
        sys.exit(130)


if __name__ == "__main__":
    main()

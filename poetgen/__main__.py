"""`python -m poetgen` and the `poetgen` command (pyproject's entry point).

The command line is imported here, inside a try: a Ctrl-C while click, rich and the rest load
then exits with 130 and no traceback, as it does once the command runs (see app/cli.py).
"""

import sys


def main() -> None:
    try:
        from poetgen.app.cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()

"""User-facing errors and the command-line wrapper that reports them.

Every command catches :class:`UserError` and prints one line naming what was wrong and what was
expected, then exits with code 2. ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem the user can fix (bad file, wrong size, bad config value...)."""


EXIT_USER_ERROR = 2


def run_cli(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs ``main(argv)``; turns a :class:`UserError` into one line on stderr and exit code 2.

    ``--debug`` anywhere in ``argv`` is removed and makes every error show its traceback.
    Unexpected exceptions print one line too (exit code 1) and suggest ``--debug``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        rc = main(args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse errors and explicit exits pass through unchanged
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001 - last-resort reporting for a CLI
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return int(rc or 0)


def cli_entry(main: Callable[[Sequence[str]], int | None]) -> None:
    """``if __name__ == '__main__': cli_entry(main)`` for every ``python -m`` command."""
    sys.exit(run_cli(main))


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= ``low`` (argparse turns the message into its one-line usage error)."""

    def parse(text: str) -> int:
        import argparse

        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected an integer >= {low}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v}; expected an integer >= {low}")
        return v

    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)

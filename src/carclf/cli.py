"""The one wrapper every command-line shell uses: user errors print one line, not a traceback.

Exit codes, the same in every carclf command:

==== ==========================================================
0    done
2    bad input or configuration (the message names the file or key)
1    an internal error (a bug: the traceback is printed)
130  interrupted (Ctrl-C)
==== ==========================================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import OmegaConfBaseException

from carclf.errors import CarclfError

T = TypeVar("T")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str, code: int = EXIT_USAGE):
    """Print ``error: message`` on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def exit_code(run: Callable[[], int | None]) -> int:
    """Run ``run`` and return its exit code instead of exiting: 0 (or what it returns), 2 with
    ``error: <message>`` on stderr for bad input or configuration, 130 when interrupted.

    A ``main(argv) -> int`` that tests call from Python ends with ``return exit_code(...)``.
    """
    try:
        return run() or EXIT_OK
    except (CarclfError, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def run_safely(fn: Callable[[], T]) -> T:
    """Run ``fn`` and return its result; a carclf or config error exits with status 2 and a
    one-line message, Ctrl-C with 130."""
    result: list = []
    code = exit_code(lambda: result.append(fn()))
    if code:
        sys.exit(code)
    return result[0]


def main_exit(main: Callable[..., int | None], *args) -> None:
    """``sys.exit`` with the code of ``main(*args)`` (see :func:`exit_code`).

    The last line of every ``__main__``: ``if __name__ == "__main__": main_exit(main)``.
    """
    sys.exit(exit_code(lambda: main(*args)))

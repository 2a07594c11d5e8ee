"""The one wrapper every command-line shell uses: user errors print one line, not a traceback.

Exit codes, the same in every carclf command (README: "Exit codes"):

==== ==========================================================================================
0    done
2    bad input or configuration (one line on stderr naming the file or key)
1    an internal error (a bug: the traceback is printed), or a result that failed its own check
     (an int8 model over ``--max-drop``, a batch job with missing rows)
130  interrupted (Ctrl-C or SIGTERM); a training run says how to continue it
==== ==========================================================================================
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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
    except KeyboardInterrupt as e:  # the message, if any, says how to continue
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}{f': {e}' if str(e) else ''}", file=sys.stderr, flush=True)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same orderly stop (and exit code 130).

    A ``KeyboardInterrupt`` so that code written for Ctrl-C handles it (Lightning's graceful
    shutdown, DataLoader workers, which exit quietly on one instead of dying mid-batch).
    """


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (then the old handler is back).

    Without it, SIGTERM kills a process mid-write and a cache build's DataLoader workers die
    with a long traceback; with it, a ``kill`` stops a command as Ctrl-C does.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    chld = getattr(signal, "SIGCHLD", None)
    old_chld = signal.getsignal(chld) if chld else None

    def _raise(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; shut down in peace
        if chld:
            # A SIGTERM sent to the process group kills DataLoader workers outright (torch's
            # worker handler re-raises one that does not come from their parent), and the
            # DataLoader's SIGCHLD handler would report each death as an error with a long
            # traceback. The process is stopping: that report is off from here on.
            signal.signal(chld, signal.SIG_DFL)
        raise Terminated()

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        if chld and old_chld is not None and signal.getsignal(chld) == signal.SIG_DFL:
            signal.signal(chld, old_chld)

"""Long phases of a command: progress a person can follow, and the clock of a time budget.

Every loop that can run longer than a few seconds (a feature cache build, the speed probe, a
validation pass, the label doctor's features) goes through :func:`bar` or :func:`track`, which

* show progress: a tqdm bar on a terminal; in a log (stderr is not a terminal) one line when the
  phase starts, so a log never sits silent for minutes without saying what runs;
* check the clock: while a run has a budget (:func:`set_budget`, set by training for
  ``trainer.time_budget_min``), a phase still running when only the time kept for the end of
  the run is left raises :class:`BudgetSpent`, which its caller turns into an orderly stop (a
  cache of the photos it reached, the best weights so far), so no loop runs past the budget.

The deadline is process-wide on purpose: the phases that must obey it live in different apps
(training, the label doctor inside a training run's report), and threading a budget object
through each would couple them; a run sets it on entry and clears it on exit.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from carclf.errors import CarclfError

T = TypeVar("T")

_end: float | None = None  # the budget's end, a time.perf_counter() value; None: no budget
_reserve = 0.0  # seconds before the end kept free for the end of the run


class BudgetSpent(CarclfError):
    """The run's time budget ran out inside a phase (the message names the phase)."""

    def __init__(self, phase: str):
        super().__init__(f"time budget spent during {phase}")
        self.phase = phase


def set_budget(end: float | None, reserve: float = 0.0) -> None:
    """Make ``end`` (a ``time.perf_counter`` value) the process's deadline, keeping ``reserve``
    seconds before it for the end of the run; ``None`` clears it."""
    global _end, _reserve
    _end, _reserve = end, reserve


def set_reserve(seconds: float) -> None:
    """Keep ``seconds`` before the end free (the planner's estimate of the end of the run)."""
    global _reserve
    _reserve = max(0.0, float(seconds))


def reserve() -> float:
    return _reserve


def seconds_left(final: bool = False) -> float | None:
    """Seconds left for work (``final``: to the end itself, reserve included); None: no budget."""
    if _end is None:
        return None
    return _end - time.perf_counter() - (0.0 if final else _reserve)


def check(phase: str) -> None:
    """Raise :class:`BudgetSpent` once the time for work (the end less the reserve) is spent."""
    left = seconds_left()
    if left is not None and left < 0:
        raise BudgetSpent(phase)


_runs_in_process = 0


def clock_start() -> float:
    """Where a command-line run's time budget starts (a ``time.perf_counter`` value).

    For the first run of a ``train.py`` process, when the process started: a user times the
    command, and the interpreter's start and the imports (seconds for torch) are part of it.
    Later runs in the same process (the jobs of a sweep) start their clock when they are called.
    """
    global _runs_in_process
    now = time.perf_counter()
    _runs_in_process += 1
    if _runs_in_process > 1:
        return now
    try:  # Linux: process start in clock ticks after boot, and the time since boot
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 600 else now


def _plural(n: int, unit: str) -> str:
    if n == 1:
        return f"1 {unit}"
    return f"{n} {unit}{'es' if unit.endswith(('ch', 'sh', 's', 'x')) else 's'}"


def is_terminal() -> bool:
    return sys.stderr.isatty()


class Bar:
    """Progress of one phase, in ``unit`` counts out of ``total``; checks the clock on update."""

    def __init__(
        self, desc: str, total: int | None, unit: str = "it", initial: int = 0, show: bool = True
    ):
        self.desc = desc
        self._tqdm = None
        if show and is_terminal():
            from tqdm import tqdm

            self._tqdm = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False
            )
        elif show:
            count = f" ({_plural(total - initial, unit)})" if total is not None else ""
            print(f"{desc}{count} ...", file=sys.stderr, flush=True)

    def update(self, n: int = 1, clock: bool = True) -> None:
        """Count ``n`` more done; with ``clock``, raise :class:`BudgetSpent` past the deadline."""
        if self._tqdm is not None:
            self._tqdm.update(n)
        if clock:
            check(self.desc)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(desc: str, total: int | None, unit: str = "it", initial: int = 0, show: bool = True) -> Bar:
    """A :class:`Bar` for a loop that counts its own progress (``with bar(...) as b: b.update(n)``)."""
    return Bar(desc, total, unit, initial, show)


def track(
    items: Iterable[T],
    desc: str,
    total: int | None = None,
    unit: str = "it",
    show: bool = True,
    stop_before: float | None = None,
) -> Iterator[T]:
    """Iterate ``items`` as one phase: progress shown, the clock checked after every item.

    At the deadline the phase raises :class:`BudgetSpent`; with ``stop_before`` it instead ends
    quietly once fewer than that many seconds are left (after its first item): for a pass whose
    partial result is still useful, such as the end-of-run validation, whose temperature is then
    fitted on the photos it reached.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with bar(desc, total, unit, show=show) as b:
        for n, item in enumerate(items):
            left = seconds_left(final=True)
            if stop_before is not None and n and left is not None and left < stop_before:
                done = f"{n} of {total}" if total else str(n)
                print(f"{desc}: stopped after {done} {unit}{'es' if unit.endswith('ch') else 's'} "
                      "by the time budget", file=sys.stderr, flush=True)  # fmt: skip
                return
            yield item
            b.update(1, clock=stop_before is None)

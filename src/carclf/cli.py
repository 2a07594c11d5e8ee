"""Shared behaviour of the command-line shells: user errors print one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import OmegaConfBaseException

from carclf.errors import CarclfError

T = TypeVar("T")


def run_safely(fn: Callable[[], T]) -> T:
    """Run ``fn``; a carclf or config error exits with status 2 and a one-line message."""
    try:
        return fn()
    except (CarclfError, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

"""Wait until something is ready: the one polling loop of recloop (services starting, files
appearing, logs flushing)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.5
) -> T:
    """Call ``check()`` until it returns a true value, and return that value.

    ``check`` is called at once, then every ``interval_s`` seconds; an exception it raises
    propagates (a check can give up early, e.g. when the process it waits for has exited).
    Raises ``TimeoutError("timed out after <timeout_s>s waiting for <what>")`` when no call
    within ``timeout_s`` seconds (wall clock, monotonic) returned a true value.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)

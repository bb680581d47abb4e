"""Progress bars for the long steps a person watches in a terminal; quiet everywhere else.

:func:`progress` is the one way recloop shows progress: a ``tqdm`` bar on stderr, shown only when
stderr is a terminal (never in Airflow task logs, CI or a pipe) and the caller did not turn it
off. What happened is logged apart, one INFO line per step with counts and seconds: the bar is for
watching, the log is the record.

    for day in progress(days, desc="ingest", unit="day"):
        ...
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def shown(enabled: bool = True) -> bool:
    """Whether a bar would be drawn: ``enabled`` and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(enabled and isatty is not None and isatty())


def progress(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
) -> Any:
    """A ``tqdm`` over ``iterable`` (or a manual bar of ``total`` with ``update(n)``) on stderr,
    disabled unless :func:`shown`. ``unit``: what one step is (``day``, ``table``, ``probe``);
    ``leave``: keep the finished bar on screen. Usable as an iterator and a context manager."""
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        file=sys.stderr,
        disable=not shown(enabled),
    )

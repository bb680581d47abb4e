"""Numbers as text, one way each, for every table recloop prints or renders.

- :func:`finite`: a value as a finite float, or None (what a report may plot or compare);
- :func:`number`: a value as a number formatted with a spec, a placeholder when it is none
  (the fixed-width text tables of the A/B analysis, the closed loop, the demo, benchmarks);
- :func:`cell`: a table cell that may hold a number or text (the HTML report, the gate table):
  floats with the spec, ints with thousands separators, text as it is;
- :func:`literal`: a raw value as it reads in a data example (``null``, ``'text'``, ``3``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

DASH = "-"
"""Placeholder of the text tables."""
EN_DASH = "–"
"""Placeholder of the HTML report."""


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite real number (numpy scalars included), else None.

    None, bools, text, NaN and infinities are not numbers here."""
    if x is None or isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def number(x: Any, spec: str = ".4f", missing: str = DASH) -> str:
    """``format(float(x), spec)``; ``missing`` when ``x`` is not a finite number (None, NaN, text
    that does not parse). Numeric text is read: ``number("0.5")`` is ``0.5000``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return missing
    return format(v, spec) if math.isfinite(v) else missing


def cell(x: Any, spec: str = ".4f", missing: str = EN_DASH) -> str:
    """A table cell: ``missing`` for None and non-finite floats; ints with thousands separators
    (as they are when ``spec`` is ``d``); other floats with ``spec`` (never ``-0.0000``);
    anything else (text, bools) as ``str``."""
    if x is None:
        return missing
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if spec != "d" else str(x)
    return format(x + 0.0, spec) if math.isfinite(x) else missing  # + 0.0: no "-0.0000"


def literal(value: Any) -> str:
    """A raw value as a data example shows it: ``null`` for missing ones (None, NaN, NaT, NA),
    text in quotes (``repr``), anything else as ``str``."""
    import numpy as np
    import pandas as pd

    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return "null"
    return repr(value) if isinstance(value, str) else str(value)

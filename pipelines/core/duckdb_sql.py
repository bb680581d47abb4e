"""Text for DuckDB SQL: string literals (paths, globs) quoted the one way DuckDB reads them.

DuckDB string literals are single-quoted and a quote inside is doubled (``'it''s'``); a path
pasted between quotes unescaped breaks the statement (or changes it) when it holds a ``'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def sql_string(text: str | Path) -> str:
    """``text`` as a DuckDB string literal: ``/a/it's`` → ``'/a/it''s'``."""
    return "'" + str(text).replace("'", "''") + "'"


def sql_list(texts: Iterable[str | Path]) -> str:
    """A DuckDB list of string literals: ``['/a/x.parquet', '/a/y.parquet']``."""
    return "[" + ", ".join(sql_string(t) for t in texts) + "]"

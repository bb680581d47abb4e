"""pipelines.core.fmt (numbers as text) and pipelines.core.duckdb_sql (SQL string literals)."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest

from pipelines.core import fmt
from pipelines.core.duckdb_sql import sql_list, sql_string


# --- fmt --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "want"),
    [(0.5, 0.5), (3, 3.0), (np.float32(0.25), 0.25), (np.int64(7), 7.0), (None, None),
     (True, None), ("0.5", None), (math.nan, None), (math.inf, None), ([1], None)],
)  # fmt: skip
def test_finite(x, want):
    assert fmt.finite(x) == want


def test_number_text_tables():
    assert fmt.number(0.123456) == "0.1235"
    assert fmt.number(-0.01, "+.4f") == "-0.0100" and fmt.number(0.01, "+.4f") == "+0.0100"
    assert fmt.number(1234.5, ".4g") == "1234" and fmt.number("0.5") == "0.5000"
    assert [fmt.number(x) for x in (None, math.nan, math.inf, "n/a")] == ["-"] * 4
    assert fmt.number(None, ".2f", missing="—") == "—"


def test_cell_html_report():
    assert fmt.cell(None) == "–" and fmt.cell(math.nan) == "–"
    assert fmt.cell(1234567) == "1,234,567" and fmt.cell(1234567, "d") == "1234567"
    assert fmt.cell(0.5) == "0.5000" and fmt.cell(-0.0) == "0.0000"
    assert fmt.cell(0.1234, ".1f") == "0.1"
    assert fmt.cell("passed") == "passed" and fmt.cell(True) == "True"
    assert fmt.cell(None, missing="-") == "-"


def test_literal_data_examples():
    assert [fmt.literal(v) for v in (None, np.nan, pd.NaT, pd.NA)] == ["null"] * 4
    assert fmt.literal("u1") == "'u1'" and fmt.literal(3) == "3" and fmt.literal(0.5) == "0.5"


# --- duckdb_sql -------------------------------------------------------------------------------
def test_sql_string_doubles_quotes():
    assert sql_string("/a/b.parquet") == "'/a/b.parquet'"
    assert sql_string("/a/it's/x.parquet") == "'/a/it''s/x.parquet'"
    assert sql_list(["/a", "/b'c"]) == "['/a', '/b''c']"
    assert sql_list([]) == "[]"


def test_duckdb_reads_a_path_with_a_quote(tmp_path):
    folder = tmp_path / "it's here"
    folder.mkdir()
    pd.DataFrame({"x": [1, 2]}).to_parquet(folder / "a.parquet")
    pd.DataFrame({"x": [3]}).to_parquet(folder / "b.parquet")
    with duckdb.connect() as con:
        one = con.execute(f"SELECT sum(x) FROM read_parquet({sql_string(folder / 'a.parquet')})")
        assert one.fetchone()[0] == 3
        glob = con.execute(f"SELECT sum(x) FROM read_parquet({sql_string(folder / '*.parquet')})")
        assert glob.fetchone()[0] == 6
        files = sorted(folder.glob("*.parquet"))
        assert (
            con.execute(f"SELECT count(*) FROM read_parquet({sql_list(files)})").fetchone()[0] == 3
        )

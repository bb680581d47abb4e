"""The data contracts: the one place the log and attribute schemas are defined.

``interactions`` — one partition per day under ``data/interactions/date=YYYY-MM-DD/*.parquet``:

| column          | type                  | meaning |
|-----------------|-----------------------|---------|
| ``event_id``    | string, unique        | id of this event |
| ``ts``          | timestamp[us, UTC]    | when it happened; inside the partition's day |
| ``user_id``     | string                | raw user id (integers in raw data are kept as their decimal text) |
| ``item_id``     | string                | raw item id |
| ``event``       | string                | one of ``impression``, ``click``, ``purchase``, ``rating`` |
| ``value``       | float64               | rating (0.5..5) for ``rating``, count (>= 0) otherwise |
| ``request_id``  | string, nullable      | the serving request (slate) that showed the item |
| ``position``    | int32, nullable       | 0-based slot in the slate |
| ``arm``         | string, nullable      | A/B arm or logging policy name |
| ``model_version``| string, nullable     | version of the model/bundle that served |
| ``propensity``  | float64, nullable     | P(logging policy showed this item in this slot), in (0, 1]; null when unknown |

``users`` (``data/users.parquet``): ``user_id, age, gender, country, signup_date``.
``items`` (``data/items.parquet``): ``item_id, category, price, created_date``.

Writes are atomic: a partition is written to a temporary folder beside it, then renamed into place,
so a reader sees the old partition or the new one, never half of either.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS = ("impression", "click", "purchase", "rating")
RATING_RANGE = (0.5, 5.0)  # MovieLens ratings.csv has half stars from 0.5

INTERACTIONS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("arm", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("propensity", pa.float64()),
    ]
)
KEY_COLUMNS = ("event_id", "ts", "user_id", "item_id", "event", "value")

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int32()),
        pa.field("gender", pa.string()),
        pa.field("country", pa.string()),
        pa.field("signup_date", pa.date32()),
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("created_date", pa.date32()),
    ]
)


def parse_date(value: str | dt.date) -> dt.date:
    """``YYYY-MM-DD`` (or a date) → ``date``; a clear error otherwise."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ValueError(f"not a date (expected YYYY-MM-DD): {value!r}") from exc


def partition_dir(root: Path, date: str | dt.date) -> Path:
    """``root/date=YYYY-MM-DD``."""
    return Path(root) / f"date={parse_date(date).isoformat()}"


def partition_dates(root: Path) -> list[dt.date]:
    """Sorted dates of the complete partitions under ``root`` (temporary folders skipped)."""
    root = Path(root)
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("date=") and len(p.name) == 15:
            try:
                out.append(dt.date.fromisoformat(p.name[5:]))
            except ValueError:
                continue
    return sorted(out)


def conform(df: pd.DataFrame, schema: pa.Schema = INTERACTIONS) -> pa.Table:
    """Cast ``df`` to ``schema`` (ids to strings, ``ts`` to UTC); missing nullable columns are added.

    Raises ``ValueError`` naming the column that cannot be converted.
    """
    df = df.copy()
    arrays = []
    for f in schema:
        if f.name not in df.columns:
            if not f.nullable:
                raise ValueError(f"missing required column {f.name!r}")
            arrays.append(pa.nulls(len(df), type=f.type))
            continue
        col = df[f.name]
        try:
            if pa.types.is_string(f.type):
                col = col.astype("string[pyarrow]")
            elif pa.types.is_timestamp(f.type):
                col = pd.to_datetime(col, utc=True)
            elif pa.types.is_date32(f.type):
                col = pd.to_datetime(col).dt.date
            arrays.append(pa.array(col, type=f.type, from_pandas=True))
        except (ValueError, TypeError, pa.ArrowInvalid) as exc:
            raise ValueError(f"column {f.name!r} cannot be read as {f.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"


def write_table_atomic(table: pa.Table | pd.DataFrame, path: Path) -> Path:
    """Write one parquet file atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = _tmp_sibling(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(obj: Any, path: Path) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (non-JSON values as ``str``), atomically."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def read_json_file(path: Path, what: str, kind: type = dict) -> Any:
    """The JSON value of ``path`` (a ``kind``: ``dict`` or ``list``), or None when the file does
    not exist. The readers of the workspace's JSON files build on this.

    Raises ``ValueError`` naming the file and ``what`` it should hold when it cannot be read, is
    not JSON, or holds another kind of value."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(value, kind):
        shape = "a JSON object" if kind is dict else f"a JSON {kind.__name__}"
        raise ValueError(f"{path}: {what} must be {shape}, got {type(value).__name__}")
    return value


def dated_json_dates(folder: Path) -> list[dt.date]:
    """Sorted dates D of the files ``folder/date=D.json`` (other names, temporary files
    included, are ignored; ``[]`` when ``folder`` does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob("date=*.json"):
        try:
            day = dt.date.fromisoformat(path.name.removeprefix("date=").removesuffix(".json"))
        except ValueError:
            continue
        if path.name == f"date={day.isoformat()}.json":
            out.append(day)
    return sorted(out)


def publish_dir(build: Callable[[Path], None], final: Path) -> Path:
    """Atomically replace folder ``final`` with what ``build(tmp)`` writes into a temporary
    folder beside it. The old folder, if any, is moved aside first and deleted only after the new
    one is in place; if ``build`` fails, ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        build(tmp)
        old = None
        if final.exists():
            old = _tmp_sibling(final)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_partition_atomic(
    table: pa.Table | pd.DataFrame, root: Path, date: str | dt.date, name: str = "part-0.parquet"
) -> Path:
    """Replace the partition ``root/date=D`` with one file holding ``table`` (:func:`publish_dir`)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    return publish_dir(lambda tmp: pq.write_table(table, tmp / name), partition_dir(root, date))


def read_partition(root: Path, date: str | dt.date) -> pd.DataFrame:
    """Read every parquet file of ``root/date=D`` into one DataFrame (raises if missing)."""
    folder = partition_dir(root, date)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files in {folder}")
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)

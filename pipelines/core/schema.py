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

Publication is crash-safe (:func:`publish_dir`): the written files and their folder are fsynced
before the renames, the old folder is moved aside to ``.bak-<name>`` (one fixed name per folder)
before the new one takes its place, and the parent folder is fsynced after. A process killed
between the two renames leaves ``.bak-<name>`` and no ``<name>``: the next publication of that
folder, :func:`partition_dir`, :func:`partition_dates` and :func:`read_partition` put it back
(:func:`recover_dir`) before anything reads or replaces it; a ``.bak-`` left beside a complete
folder (a crash after the second rename) is deleted. ``RECLOOP_FSYNC=0`` skips the fsyncs (tests
on slow disks; never in production).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

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
    """``root/date=YYYY-MM-DD``; a publication of it that a crash interrupted is recovered first
    (:func:`recover_dir`: one ``stat`` when there is none), so every reader and writer that
    finds a partition through here sees the complete old or new folder."""
    folder = Path(root) / f"date={parse_date(date).isoformat()}"
    recover_dir(folder)
    return folder


def partition_dates(root: Path) -> list[dt.date]:
    """Sorted dates of the complete partitions under ``root`` (temporary folders skipped;
    publications that a crash interrupted recovered first: :func:`recover_root`)."""
    root = Path(root)
    if not root.exists():
        return []
    recover_root(root)
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


def _tmp_owner() -> str:
    """``<pid>@<host>``: who writes a temporary (a process of this machine can be checked)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _gone(owner: str) -> bool:
    """True when ``owner`` (``<pid>@<host>``) is a process of this machine that has ended."""
    pid, _, host = owner.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def _tmp_sibling(path: Path) -> Path:
    """A new temporary name beside ``path``: ``.tmp-<name>-<pid>@<host>-<random>``. The
    temporaries of ``path`` whose process has ended (killed while writing) are deleted first, so
    a rerun after a crash leaves what an undisturbed run leaves; a live writer's are kept."""
    prefix = f".tmp-{path.name}-"
    if path.parent.is_dir():
        for old in path.parent.iterdir():
            if old.name.startswith(prefix) and _gone(old.name[len(prefix) :].rpartition("-")[0]):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        old.unlink()
    return path.parent / f"{prefix}{_tmp_owner()}-{uuid.uuid4().hex[:8]}"


BACKUP_PREFIX = ".bak-"
"""``<parent>/.bak-<name>``: where :func:`publish_dir` keeps the old folder between its renames."""


def _fsync_enabled() -> bool:
    return os.environ.get("RECLOOP_FSYNC", "1").strip() != "0"


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries when ``directory``) to the disk. A folder
    on a file system that cannot fsync folders (``EINVAL``) is skipped; ``RECLOOP_FSYNC=0``
    skips everything."""
    if not _fsync_enabled():
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not directory or exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """:func:`fsync_path` every file under ``folder``, then every folder (deepest first)."""
    if not _fsync_enabled():
        return
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath), directory=True)


def _replace_durably(tmp: Path, path: Path) -> None:
    """fsync the file ``tmp``, rename it to ``path``, fsync the folder (the rename's entry)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent, directory=True)


def write_table_atomic(table: pa.Table | pd.DataFrame, path: Path) -> Path:
    """Write one parquet file atomically and durably (temp file in the same folder, fsync,
    ``os.replace``, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = _tmp_sibling(path)
    try:
        pq.write_table(table, tmp)
        _replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically and durably (temp file in the same folder, fsync,
    ``os.replace``, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        _replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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


def recover_dir(final: Path) -> bool:
    """Repair what a crash inside :func:`publish_dir` of ``final`` left; True when it did.

    ``.bak-<name>`` without ``<name>`` (killed between the two renames): the old folder is
    renamed back. ``.bak-<name>`` beside ``<name>`` (killed after the second rename): the new
    folder is complete, the backup is deleted. An ``OSError`` (a read-only workspace, a race with
    another process's recovery) is logged and leaves things as they are."""
    final = Path(final)
    backup = final.parent / f"{BACKUP_PREFIX}{final.name}"
    if not os.path.lexists(backup):
        return False
    try:
        if final.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(backup, final)
            fsync_path(final.parent, directory=True)
            log.warning("recovered %s from %s (a publication was interrupted)", final, backup.name)
    except OSError as exc:
        log.warning("could not recover %s from %s: %s", final, backup.name, exc)
        return False
    return True


def recover_root(root: Path) -> list[Path]:
    """:func:`recover_dir` every folder under ``root`` that has a ``.bak-`` backup beside it;
    the folders recovered."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = [p.name[len(BACKUP_PREFIX) :] for p in root.iterdir()
             if p.name.startswith(BACKUP_PREFIX)]  # fmt: skip
    return [root / n for n in names if recover_dir(root / n)]


def _swap_in(tmp: Path, final: Path, attempts: int = 3) -> None:
    """Rename ``tmp`` to ``final``, the old ``final`` moved aside to its backup name first and
    deleted after. Another process may recover the backup between the two renames (it saw no
    ``final``): the rename then fails on the non-empty ``final`` and is tried again."""
    backup = final.parent / f"{BACKUP_PREFIX}{final.name}"
    for attempt in range(attempts):
        if final.exists():
            os.replace(final, backup)
        try:
            os.replace(tmp, final)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == attempts - 1:
                recover_dir(final)
                raise
    fsync_path(final.parent, directory=True)
    shutil.rmtree(backup, ignore_errors=True)


def publish_dir(build: Callable[[Path], None], final: Path) -> Path:
    """Atomically and durably replace folder ``final`` with what ``build(tmp)`` writes into a
    temporary folder beside it (module docstring: fsync, ``.bak-`` backup, recovery). If
    ``build`` fails, ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        build(tmp)
        fsync_tree(tmp)
        _swap_in(tmp, final)
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


def quarantine_file(path: Path, home: Path, quarantine_dir: Path, reason: str) -> Path:
    """Move the unreadable file ``path`` (under the workspace ``home``) out of the way, to
    ``quarantine_dir/files/<its path relative to home>``, beside a ``<name>.reason.json`` record
    (``file``: the original path, ``reason``, ``quarantined_at`` UTC); returns the new path. The
    readers that skip a corrupt file and go on (validation's volume history, the feature
    window, ``ingest-served``) call this; a warning names the file and the reason."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(Path(home).resolve())
    except ValueError:
        rel = Path(path.name)
    target = Path(quarantine_dir) / "files" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same name quarantined before: keep both
        target = target.with_name(f"{target.stem}-{uuid.uuid4().hex[:8]}{target.suffix}")
    os.replace(path, target)
    record = {"file": str(path), "reason": reason,
              "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    write_json_atomic(record, target.with_name(target.name + ".reason.json"))
    log.warning("quarantined unreadable %s (%s) to %s", path, reason, target)
    return target


def parquet_problem(path: Path, columns: list[str] | None = None) -> str | None:
    """Why ``path`` cannot be read as parquet (its footer, then ``columns`` in full, all when
    None), or None when it reads."""
    try:
        pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"unreadable parquet file: {exc}"
    return None


def read_partition(root: Path, date: str | dt.date) -> pd.DataFrame:
    """Read every parquet file of ``root/date=D`` into one DataFrame (raises if missing)."""
    folder = partition_dir(root, date)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files in {folder}")
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)

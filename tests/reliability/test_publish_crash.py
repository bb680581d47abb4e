"""Issue 17, case 7: publication survives a crash, and an import keeps what other sources wrote.

A process killed (``os._exit``, no cleanup) between ``publish_dir``'s two renames must leave the
old partition readable, and a rerun of ``ingest-served`` must then write every row it had plus
the served ones: nothing lost, compared by row hashes with an undisturbed run. ``ingest`` onto a
day that already holds rows of another source keeps them, and a re-import changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.data import ingest

pytestmark = pytest.mark.integration  # crashes a python subprocess (a real SIGKILL-like exit)

DAY = dt.date(2025, 3, 4)
REPO = Path(__file__).resolve().parents[2]


def row_hashes(frame: pd.DataFrame) -> list[str]:
    """Sorted hashes of each row's key columns: what 'nothing lost' compares."""
    cols = list(schema.KEY_COLUMNS) + ["request_id", "position"]
    text = frame[cols].astype(str).agg("|".join, axis=1)
    return sorted(hashlib.sha256(t.encode()).hexdigest() for t in text)


def sim_rows(n: int = 6) -> pd.DataFrame:
    ts = pd.Timestamp(DAY, tz="UTC") + pd.to_timedelta(range(n), unit="min")
    return pd.DataFrame({"event_id": [f"sim-{i}" for i in range(n)], "ts": ts,
                         "user_id": [f"u{i % 3}" for i in range(n)],
                         "item_id": [f"i{i}" for i in range(n)],
                         "event": "impression", "value": 1.0})  # fmt: skip


def write_served_log(settings: Settings) -> None:
    """Two served requests of DAY in the service's log (as the service writes it)."""
    from serving.logging import ImpressionLog, impression_rows, impressions_dir

    log = ImpressionLog(impressions_dir(settings.home))
    for k in range(2):
        ts = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=5 + k)
        log.add(impression_rows(f"req{k}", ts, f"u{k}", ["a", "b"], [0.5, 0.5], "champion",
                                "bundle-1"))  # fmt: skip
    assert log.flush()


def crash_during_publish(settings: Settings, code: str, target: Path) -> int:
    """Run ``code`` in a child that dies (``os._exit``) when a folder is renamed onto ``target``:
    the second rename of the publication of ``target``."""
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        real = os.replace
        def crashing(src, dst):
            if Path(dst) == Path({str(target)!r}):
                os._exit(9)
            return real(src, dst)
        os.replace = crashing
        from pipelines.core.settings import Settings
        settings = Settings.from_env()
    """) + textwrap.dedent(code)
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, timeout=120)
    return proc.returncode


def test_crash_between_renames_keeps_the_old_partition(settings: Settings) -> None:
    root = settings.interactions_dir
    schema.write_partition_atomic(schema.conform(sim_rows()), root, DAY)
    before = row_hashes(schema.read_partition(root, DAY))
    code = f"""
        import pandas as pd
        from pipelines.core import schema
        frame = pd.read_parquet(schema.partition_dir(settings.interactions_dir, {DAY.isoformat()!r}))
        schema.write_partition_atomic(frame.head(2), settings.interactions_dir, {DAY.isoformat()!r})
    """
    assert crash_during_publish(settings, code, schema.partition_dir(root, DAY)) == 9
    assert DAY in schema.partition_dates(root)  # the day is still there after the crash
    assert row_hashes(schema.read_partition(root, DAY)) == before  # the old rows, all of them
    assert not [p for p in root.iterdir() if p.name.startswith(".bak-")]  # recovered


def test_ingest_served_rerun_after_crash_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    from pipelines.loop.served import ingest_served

    root = settings.interactions_dir
    schema.write_partition_atomic(schema.conform(sim_rows()), root, DAY)
    write_served_log(settings)
    code = f"""
        from pipelines.loop.served import ingest_served
        ingest_served(settings, {DAY.isoformat()!r})
    """
    assert crash_during_publish(settings, code, schema.partition_dir(root, DAY)) == 9
    out = ingest_served(settings, DAY)  # the rerun
    assert out["existing_rows"] == 6
    crashed = row_hashes(schema.read_partition(root, DAY))

    # the same day, undisturbed, in a second workspace
    other = Settings(home=tmp_path / "undisturbed")
    other.ensure_dirs()
    schema.write_partition_atomic(schema.conform(sim_rows()), other.interactions_dir, DAY)
    write_served_log(other)
    ingest_served(other, DAY)
    assert crashed == row_hashes(schema.read_partition(other.interactions_dir, DAY))
    assert len(crashed) == 6 + 4  # six simulated rows + four served impressions


def test_import_keeps_rows_another_source_wrote(settings: Settings, tmp_path: Path) -> None:
    root = settings.interactions_dir
    served = schema.conform(sim_rows())  # e.g. what ingest-served wrote for the day
    schema.write_partition_atomic(served, root, DAY)
    t0 = int(pd.Timestamp(DAY, tz="UTC").timestamp()) + 3600
    src = tmp_path / "clicks.csv"
    src.write_text(f"uid,sku,when\nalice,A1,{t0}\nbob,B2,{t0 + 86400}\n")
    mapping = {"user_id": "uid", "item_id": "sku", "ts": "when"}
    ingest.import_table(settings, src, mapping, ts_unit="s")
    day = schema.read_partition(root, DAY)
    assert set(row_hashes(served.to_pandas())) <= set(row_hashes(day))  # other source kept
    assert len(day) == 6 + 1 and day["event_id"].is_unique
    digest = ingest.partition_digest(settings, DAY)
    ingest.import_table(settings, src, mapping, ts_unit="s")  # a re-import changes nothing
    assert ingest.partition_digest(settings, DAY) == digest
    assert len(schema.read_partition(root, DAY)) == 7
    assert ingest.imported_partition(settings, DAY) is not None


def test_publication_is_fsynced(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    monkeypatch.setenv("RECLOOP_FSYNC", "1")  # on, whatever the test session says
    final = schema.write_partition_atomic(
        schema.conform(sim_rows()), settings.interactions_dir, DAY
    )
    assert str(final / "part-0.parquet") in synced or any(
        s.endswith("/part-0.parquet") for s in synced
    )  # the file's bytes, written in the temporary folder, reached the disk
    assert str(final.parent) in synced  # and the renames in the parent folder

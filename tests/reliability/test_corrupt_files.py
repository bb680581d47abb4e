"""Issue 17, case 11: one corrupt file is quarantined, the rest goes on.

A corrupt *validated* file (bytes damaged after validation passed) must not fail the next
validations (their volume history) nor the feature days whose 28-day window holds it; a corrupt
file in the service's log must not fail ``ingest-served``. Each time the file is moved to
``quarantine/files/<its path in the workspace>`` with a ``.reason.json`` naming the file and
what was wrong, and every other row is used.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings

D = dt.date(2024, 3, 28)


def rows(day: dt.date, n: int, prefix: str) -> pd.DataFrame:
    ts = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(range(n), unit="min")
    return pd.DataFrame({"event_id": [f"{prefix}{i}" for i in range(n)], "ts": ts,
                         "user_id": [f"u{i % 7}" for i in range(n)],
                         "item_id": [f"i{i % 5}" for i in range(n)],
                         "event": ["impression", "click"] * (n // 2) + ["impression"] * (n % 2),
                         "value": 1.0, "request_id": [f"{prefix}r{i}" for i in range(n)],
                         "position": 0, "arm": "A", "model_version": "m", "propensity": 0.5})  # fmt: skip


def validated_history(settings: Settings, days: int, n: int = 100) -> None:
    for back in range(1, days + 1):
        day = D - dt.timedelta(days=back)
        frame = schema.conform(rows(day, n, f"h{back}-"))
        schema.write_partition_atomic(frame, settings.validated_dir, day)


def corrupt(path: Path) -> None:
    """Damage ``path`` the way a bad disk or a partial copy does: a truncated file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def quarantined(settings: Settings, original: Path) -> dict:
    """The reason record of ``original`` in the file quarantine (asserting the file is there)."""
    moved = settings.quarantine_dir / "files" / original.relative_to(settings.home)
    assert moved.exists() and not original.exists()
    record = json.loads(moved.with_name(moved.name + ".reason.json").read_text())
    assert record["file"] == str(original) and record["reason"]
    return record


def test_corrupt_validated_file_does_not_fail_later_validations(settings: Settings) -> None:
    from pipelines.data.validate import validate_partition

    validated_history(settings, days=4)
    bad = schema.partition_dir(settings.validated_dir, D - dt.timedelta(days=2)) / "part-0.parquet"
    corrupt(bad)
    for day in (D, D + dt.timedelta(days=1)):  # the next validations, one after the other
        schema.write_partition_atomic(schema.conform(rows(day, 90, f"d{day}-")),
                                      settings.interactions_dir, day)  # fmt: skip
        result = validate_partition(settings, day, data_docs=False)
        assert result.rows_good == 90
    assert result.trailing_days == 4  # D-4, D-3, D-1 and D; the damaged D-2 left out
    quarantined(settings, bad)


def test_corrupt_validated_file_does_not_fail_feature_days(settings: Settings) -> None:
    from pipelines.features.tables import compute_features, read_table

    validated_history(settings, days=3)
    schema.write_partition_atomic(schema.conform(rows(D, 10, "d-")), settings.validated_dir, D)
    bad = schema.partition_dir(settings.validated_dir, D - dt.timedelta(days=1)) / "part-0.parquet"
    corrupt(bad)
    out = compute_features(settings, D)
    assert out["events"] == 10 + 2 * 100  # D, D-2, D-3: every readable row
    items = {r["item_id"]: r for r in read_table(settings, "item", D).to_pylist()}
    assert sum(r["item_impressions_7d"] for r in items.values()) == 5 + 2 * 50
    assert "reason" in quarantined(settings, bad)
    nxt = D + dt.timedelta(days=1)  # the next feature day's window holds D-1 too
    schema.write_partition_atomic(schema.conform(rows(nxt, 4, "n-")), settings.validated_dir, nxt)
    assert compute_features(settings, nxt)["events"] == 4 + 10 + 2 * 100


def test_corrupt_served_log_file_does_not_fail_ingest_served(settings: Settings) -> None:
    from pipelines.loop.served import ingest_served
    from serving.logging import ImpressionLog, impression_rows, impressions_dir

    log = ImpressionLog(impressions_dir(settings.home))
    ts = pd.Timestamp(D, tz="UTC") + pd.Timedelta(hours=9)
    log.add(impression_rows("req1", ts, "u1", ["a", "b", "c"], [0.5] * 3, "champion", "bundle-1"))
    (good,) = log.flush()
    bad = good.with_name("part-20240328T100000-badbadbadbad.parquet")
    bad.write_bytes(good.read_bytes())
    corrupt(bad)
    out = ingest_served(settings, D)
    assert out["impressions"] == 3 and out["rows_written"] == 3
    assert out["corrupt_files"] == [str(bad)]
    assert len(schema.read_partition(settings.interactions_dir, D)) == 3
    quarantined(settings, bad)
    assert good.exists()  # the readable file stays where the service wrote it

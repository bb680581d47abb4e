"""MovieLens and generic importers on small files the tests write."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.core import schema
from pipelines.data import ingest

DAY = 86400
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        (1, 10, 5, T0),
        (1, 20, 3, T0 + 3600),  # 23:13 same UTC day
        (2, 10, 4, T0 + DAY),
        (3, 30, 1, T0 + 2 * DAY),
    ]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    genre_flags = ["0"] * 19
    action = genre_flags.copy()
    action[1] = "1"
    drama = genre_flags.copy()
    drama[8] = "1"
    (folder / "u.item").write_text(
        "10|Toy|01-Jan-1995||http://x|" + "|".join(action) + "\n"
        "20|Heat|15-Dec-1995||http://x|" + "|".join(drama) + "\n"
        "30|Nix|||http://x|" + "|".join(genre_flags) + "\n",
        encoding="latin-1",
    )
    (folder / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n"
    )
    return folder / "u.data"


def test_ml100k_daily_partitions_and_attributes(settings):
    summary = ingest.import_movielens(settings, write_ml100k(settings.home / "ml"))
    assert summary.rows == 4 and summary.days == 3 and summary.users == 3 and summary.items == 3
    dates = schema.partition_dates(settings.interactions_dir)
    assert [d.isoformat() for d in dates] == ["2023-11-14", "2023-11-15", "2023-11-16"]
    day0 = schema.read_partition(settings.interactions_dir, dates[0])
    assert pq.read_schema(
        next(schema.partition_dir(settings.interactions_dir, dates[0]).glob("*.parquet"))
    ).equals(schema.INTERACTIONS)
    assert sorted(day0["item_id"]) == ["10", "20"]
    assert set(day0["event"]) == {"rating"} and sorted(day0["value"]) == [3.0, 5.0]
    assert day0["propensity"].isna().all() and day0["event_id"].is_unique
    items = pd.read_parquet(settings.data_dir / "items.parquet").set_index("item_id")
    assert items.loc["10", "category"] == "Action" and items.loc["20", "category"] == "Drama"
    assert str(items.loc["30", "created_date"]) == "2023-11-16"  # no release date: first seen
    users = pd.read_parquet(settings.data_dir / "users.parquet").set_index("user_id")
    assert users.loc["2", "age"] == 53 and users.loc["2", "gender"] == "F"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.parquet")):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_reimport_is_idempotent_and_leaves_other_days(settings):
    path = write_ml100k(settings.home / "ml")
    ingest.import_movielens(settings, path)
    schema.write_partition_atomic(
        schema.conform(
            pd.DataFrame(
                {
                    "event_id": ["x"],
                    "ts": ["2020-01-01T00:00:00Z"],
                    "user_id": ["9"],
                    "item_id": ["9"],
                    "event": ["click"],
                    "value": [1.0],
                }
            )
        ),
        settings.interactions_dir,
        "2020-01-01",
    )
    before = _digest(settings.data_dir)
    ingest.import_movielens(settings, path)
    assert _digest(settings.data_dir) == before
    assert len(schema.partition_dates(settings.interactions_dir)) == 4


def test_ratings_csv_with_movies_csv(settings):
    folder = settings.home / "ml25"
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text(
        f"userId,movieId,rating,timestamp\n1,1,4.5,{T0}\n1,2,3.0,{T0 + DAY}\n2,1,oops,{T0}\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story,Adventure|Animation\n2,Heat,Action\n"
    )
    summary = ingest.import_movielens(settings, folder)
    assert summary.rows == 2 and summary.dropped == 1
    items = pd.read_parquet(settings.data_dir / "items.parquet").set_index("item_id")
    assert items.loc["1", "category"] == "Adventure"
    assert not (settings.data_dir / "users.parquet").exists()


def test_bad_movielens_file_names_the_file(settings, tmp_path):
    bad = tmp_path / "ratings.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="ratings.csv: missing column"):
        ingest.import_movielens(settings, bad)
    with pytest.raises(FileNotFoundError, match="no u.data or ratings.csv"):
        ingest.import_movielens(settings, settings.home)


def test_generic_table_with_mapping_via_cli(settings, tmp_path, capsys):
    src = tmp_path / "clicks.csv"
    src.write_text(f"uid,sku,when\nalice,A1,{T0}\nbob,B2,{T0 + DAY}\nbob,B3,notatime\n")
    code = main(
        [
            "ingest",
            "table",
            str(src),
            "--map",
            "user_id=uid",
            "--map",
            "item_id=sku",
            "--map",
            "ts=when",
            "--ts-unit",
            "s",
        ]
    )
    assert code == 0
    assert "imported 2 events" in capsys.readouterr().out
    day = schema.read_partition(settings.interactions_dir, "2023-11-15")
    assert day["user_id"].tolist() == ["bob"] and day["event"].tolist() == ["click"]
    assert main(["ingest", "table", str(src), "--map", "user=uid"]) == 2
    assert "not a column of the log contract" in capsys.readouterr().err


@pytest.mark.integration  # trains two models on the imported workspace
def test_movielens_end_to_end_recommend_and_predict_ratings(settings, tmp_path):
    """Import → validate → train (implicit MF and explicit MF) → recommend / predict, raw ids out."""
    import numpy as np

    from pipelines.data.validate import validate_partition
    from pipelines.retrieval import predict, train

    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 41):
        liked = rng.choice(30, size=8, replace=False) + (u % 2) * 30  # two taste groups
        for j, item in enumerate(liked):
            rating = int(rng.integers(4, 6)) if item < 30 else int(rng.integers(1, 3))
            lines.append(f"{u}\t{item + 100}\t{rating}\t{T0 + (j % 2) * DAY + u}\n")
    folder = tmp_path / "ml-tiny"
    folder.mkdir()
    (folder / "u.data").write_text("".join(lines))
    ingest.import_movielens(settings, folder)
    for day in schema.partition_dates(settings.interactions_dir):
        validate_partition(settings, day)
    last = schema.partition_dates(settings.validated_dir)[-1]
    train.train(settings, "mf", last)
    recs = predict.recommend(settings, "mf", 3, ["1", "2"])
    assert sorted(recs["user_id"].unique()) == ["1", "2"] and recs["item_id"].str.isdigit().all()
    train.train(settings, "mf_explicit", last)
    pairs = pd.DataFrame({"user_id": ["2", "3"], "item_id": ["105", "140"]})
    scores = predict.predict_pairs(settings, "mf_explicit", pairs)
    assert scores["known"].all()
    assert ((scores["score"] > 0) & (scores["score"] < 6.5)).all()  # on the rating scale


def test_import_records_name_source_range_and_counts(settings):
    path = write_ml100k(settings.home / "ml")
    ingest.import_movielens(settings, path)
    record = ingest.read_import_record(settings, "2023-11-14")
    assert record["source"] == "movielens" and record["file"] == str(path.resolve())
    assert record["rows"] == 2 and record["date"] == "2023-11-14"
    assert record["import"]["first_date"] == "2023-11-14"
    assert record["import"]["last_date"] == "2023-11-16"
    assert record["import"]["rows"] == 4 and record["import"]["days"] == 3
    assert ingest.imported_partition(settings, "2023-11-14") == record
    assert ingest.read_import_record(settings, "2023-11-13") is None
    before = ingest.read_import_record(settings, "2023-11-15")
    ingest.import_movielens(settings, path)  # idempotent: same record
    assert ingest.read_import_record(settings, "2023-11-15") == before
    # a live log written over an imported day is no longer imported history
    day = schema.read_partition(settings.interactions_dir, "2023-11-15")
    schema.write_partition_atomic(
        schema.conform(day.assign(event="click")), settings.interactions_dir, "2023-11-15"
    )
    assert ingest.imported_partition(settings, "2023-11-15") is None


T0_MS = T0 * 1000


def write_retailrocket(path: Path) -> Path:
    """A RetailRocket-style event log: ms timestamps, views/carts/purchases, one unknown event."""
    rows = [
        (T0_MS, "v1", "view", "100", ""),
        (T0_MS + 1000, "v1", "addtocart", "100", ""),
        (T0_MS + 2000, "v1", "transaction", "100", "t1"),
        (T0_MS + 3000, "v2", "view", "200", ""),
        (T0_MS + 4000, "v2", "wishlist", "200", ""),  # line 6: not mapped
        (T0_MS + DAY * 1000, "v2", "view", "100", ""),
        (T0_MS + DAY * 1000 + 5, "v3", "view", "300", ""),
        (T0_MS + DAY * 1000 + 9, "v3", "transaction", "300", "t2"),
    ]
    path.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        + "".join(f"{t},{u},{e},{i},{x}\n" for t, u, e, i, x in rows)
    )
    return path


RR_ARGS = [
    "--map",
    "user_id=visitorid",
    "--map",
    "item_id=itemid",
    "--map",
    "ts=timestamp",
    "--map",
    "event=event",
    "--ts-unit",
    "ms",
]


def test_event_log_with_event_mapping_validates(settings, tmp_path, capsys):
    from pipelines.data.validate import validate_partition

    src = write_retailrocket(tmp_path / "events.csv")
    events = ["--events", "view=click,addtocart=click", "--events", "transaction=purchase"]
    assert main(["ingest", "table", str(src), *RR_ARGS, *events]) == 0
    out = capsys.readouterr().out
    assert "imported 7 events" in out and "1 rows dropped" in out
    assert "unknown event value 'wishlist'" in out and "[6]" in out  # the source line
    day0 = schema.read_partition(settings.interactions_dir, "2023-11-14")
    assert day0["event"].tolist() == ["click", "click", "purchase", "click"]
    assert day0["ts"].iloc[0] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert (day0["value"] == 1.0).all() and day0["propensity"].isna().all()
    record = ingest.read_import_record(settings, "2023-11-15")
    assert record["source"] == "table" and record["file"] == str(src.resolve())
    assert record["import"]["dropped_by_reason"] == {"unknown event value 'wishlist'": 1}
    assert record["options"]["events"]["view"] == "click" and record["options"]["ts_unit"] == "ms"
    for day in schema.partition_dates(settings.interactions_dir):
        result = validate_partition(settings, day)
        assert result.rows_quarantined == 0 and result.volume_rule == "imported"
    day1 = schema.read_partition(settings.validated_dir, "2023-11-15")
    assert sorted(day1["event"]) == ["click", "click", "purchase"]


def test_unmapped_event_log_fails_with_a_hint(settings, tmp_path, capsys):
    src = write_retailrocket(tmp_path / "events.csv")
    assert main(["ingest", "table", str(src), *RR_ARGS]) == 2
    err = capsys.readouterr().err
    assert "events.csv" in err and "'view': 4" in err and "--events" in err
    assert schema.partition_dates(settings.interactions_dir) == []
    with pytest.raises(ValueError, match="'seen' is not an event of the log contract"):
        ingest.parse_events(["view=seen"])
    with pytest.raises(ValueError, match="--map event=COLUMN"):
        ingest.import_table(
            settings, src, {"user_id": "visitorid", "item_id": "itemid", "ts": "timestamp"},
            ts_unit="ms", events={"view": "click"},
        )  # fmt: skip

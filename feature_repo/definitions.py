"""recloop's Feast definitions: entities, feature views and versioned feature services.

One module, shaped like Feast's local template. The objects are built by :func:`build` for a
given features folder (the workspace's ``RECLOOP_HOME/features``): ``pipelines/features/store.py``
calls it in-process with the settings at hand. The module-level objects below are the same
definitions for the ``RECLOOP_HOME`` of the environment, so that the ``feast`` CLI, run inside
this folder, finds them (``cd feature_repo && feast apply``; see feature_store.yaml).

Feature columns and their meaning are defined with the tables in ``pipelines/features/tables.py``
(``USER_FEATURES`` / ``ITEM_FEATURES``); this module maps them to Feast types.

Feature services, one per consumer, versioned by name (a new version is a new service; an
old one stays until its consumer moves):

- ``ranker_v1``: every user and item feature (the DLRM ranker's dense + sparse inputs);
- ``two_tower_v1``: the subset the two-tower towers read (attributes + 28-day activity);
- ``serving_v1``: every feature, for the online service's hydration step.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_source import DataSource
from feast.types import Float64, Int64, String

from pipelines.core.settings import Settings
from pipelines.features.tables import ITEM_FEATURES, USER_FEATURES

TTL = timedelta(days=2)
"""A feature row is valid for 2 days after its event timestamp (the end of its day): the next
day's table normally replaces it after one day; one missed day is tolerated, two are stale."""

_DTYPES = {"int64": Int64, "float64": Float64, "string": String}

TWO_TOWER_USER = (
    "user_age",
    "user_gender",
    "user_country",
    "user_tenure_days",
    "user_top_category",
    "user_impressions_28d",
    "user_clicks_28d",
    "user_purchases_28d",
    "user_ctr_28d",
)
TWO_TOWER_ITEM = (
    "item_category",
    "item_price",
    "item_age_days",
    "item_ctr_28d",
    "item_impressions_28d",
    "item_clicks_28d",
    "item_avg_rating_28d",
)


def _schema(features: tuple[tuple[str, str, str], ...]) -> list[Field]:
    return [Field(name=n, dtype=_DTYPES[t], description=d) for n, t, d in features]


def build(features_dir: Path | str, engine: str = "duckdb") -> dict:
    """Every Feast object of the repository, reading tables under ``features_dir``.

    ``engine`` (``settings.feature_engine``) picks the sources: ``FileSource`` for Feast's file
    offline store (``duckdb``, the default), ``SparkSource`` over the same parquet partitions
    for Feast's Spark offline store (``spark``, see ``pipelines.features.store.repo_config``).
    Returns a dict: ``user``, ``item`` (entities), ``user_source``, ``item_source``
    (sources), ``user_features``, ``item_features`` (FeatureViews), ``ranker_v1``,
    ``two_tower_v1``, ``serving_v1`` (FeatureServices).
    """
    features_dir = Path(features_dir)
    user = Entity(
        name="user",
        join_keys=["user_id"],
        value_type=ValueType.STRING,
        description="a user (raw id, string)",
    )
    item = Entity(
        name="item",
        join_keys=["item_id"],
        value_type=ValueType.STRING,
        description="an item (raw id, string)",
    )
    user_source, user_features = _table_view(features_dir, "user", user, USER_FEATURES, engine)
    item_source, item_features = _table_view(features_dir, "item", item, ITEM_FEATURES, engine)
    return {
        "user": user,
        "item": item,
        "user_source": user_source,
        "item_source": item_source,
        "user_features": user_features,
        "item_features": item_features,
        **_feature_services(user_features, item_features),
    }


def _source(features_dir: Path, table: str, engine: str) -> DataSource:
    """The source ``<table>_features_source`` over ``features_dir/<table>`` (one partition per
    logical date): a ``SparkSource`` (parquet, read by Spark) for the ``spark`` engine, else a
    ``FileSource``. No ``date_partition_column``: Feast would prune ``date=D`` by the date of
    the wanted timestamps, but D's rows are stamped ``D+1 00:00`` and would be cut at the edge."""
    common = {
        "name": f"{table}_features_source",
        "path": str(features_dir / table),
        "timestamp_field": "event_timestamp",
        "created_timestamp_column": "created",
        "description": f"features/{table}/date=D/part-0.parquet, one partition per logical date",
    }
    if engine == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(file_format="parquet", **common)
    return FileSource(**common)


def _table_view(
    features_dir: Path,
    table: str,
    entity: Entity,
    features: tuple[tuple[str, str, str], ...],
    engine: str = "duckdb",
) -> tuple[DataSource, FeatureView]:
    """The source of :func:`_source` and its online FeatureView ``<table>_features`` keyed by
    ``entity``."""
    source = _source(features_dir, table, engine)
    view = FeatureView(
        name=f"{table}_features",
        entities=[entity],
        ttl=TTL,
        schema=_schema(features),
        source=source,
        online=True,
        tags={"owner": "recloop", "table": table},
    )
    return source, view


def _feature_services(
    user_features: FeatureView, item_features: FeatureView
) -> dict[str, FeatureService]:
    """The versioned feature services, one per consumer: ``ranker_v1``, ``two_tower_v1``,
    ``serving_v1`` (see the module docstring)."""
    ranker_v1 = FeatureService(
        name="ranker_v1",
        features=[user_features, item_features],
        description="DLRM ranker: every user and item feature",
        tags={"consumer": "ranker"},
    )
    two_tower_v1 = FeatureService(
        name="two_tower_v1",
        features=[user_features[list(TWO_TOWER_USER)], item_features[list(TWO_TOWER_ITEM)]],
        description="two-tower retriever: attributes and 28-day activity",
        tags={"consumer": "two_tower"},
    )
    serving_v1 = FeatureService(
        name="serving_v1",
        features=[user_features, item_features],
        description="online service hydration: every user and item feature",
        tags={"consumer": "serving"},
    )
    return {"ranker_v1": ranker_v1, "two_tower_v1": two_tower_v1, "serving_v1": serving_v1}


# Module-level objects for the `feast` CLI (it collects the objects defined in the repo's
# modules), for the workspace of the environment (pipelines.core.settings: RECLOOP_HOME).
_settings = Settings.from_env()
_objects = build(_settings.features_dir, _settings.feature_engine)
user = _objects["user"]
item = _objects["item"]
user_features = _objects["user_features"]
item_features = _objects["item_features"]
ranker_v1 = _objects["ranker_v1"]
two_tower_v1 = _objects["two_tower_v1"]
serving_v1 = _objects["serving_v1"]

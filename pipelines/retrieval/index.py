"""The ``build_index`` task: a FAISS index over the item embeddings of the two-tower model trained
through D, recall-checked against exact search, saved under ``artifacts/index/index-<version>/``;
an index estimated above ``RECLOOP_INDEX_MEMORY_BUDGET_MB`` is built as IVF with on-disk lists.

The FAISS library itself (index choice, tuning, :class:`ItemIndex`) is
:mod:`pipelines.retrieval.faiss_index`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np

from pipelines.core import layout
from pipelines.core.settings import Settings
from pipelines.retrieval.train import load_artifact

log = logging.getLogger(__name__)


def build_item_index(
    settings: Settings, date: str | dt.date, name: str = "two_tower", recall_target: float = 0.95
) -> dict[str, Any]:
    """FAISS index over the item embeddings of model ``name`` trained through ``date``; recall@10
    is measured against exact search on real user vectors (a build below target fails)."""
    from pipelines.retrieval.faiss_index import build_index, index_dir

    art = load_artifact(settings, name, date)
    items = art.model.item_embeddings()
    queries = art.model.user_embeddings()
    version = art.meta["version"]
    index = build_index(
        items,
        np.array(art.items.ids),
        sample_queries=queries,
        recall_target=recall_target,
        k=10,
        model_version=version,
        seed=settings.seed,
        memory_budget_mb=settings.index_memory_budget_mb,
        workdir=layout.indexes_dir(settings),  # on-disk lists: built where they are published
    )
    root = layout.indexes_dir(settings)
    path = index.save(root)
    assert path == index_dir(root, version)
    log.info(
        "index for %s: %s, recall@10 %.4f",
        version,
        index.meta.get("kind"),
        index.meta.get("recall", float("nan")),
    )
    return {
        k: v for k, v in index.meta.items() if isinstance(v, (str, int, float, bool, type(None)))
    } | {"path": str(path)}

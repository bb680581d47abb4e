"""Bundles built on purpose for the loop's A/B scenarios: a clearly worse (or retrieval-only)
variant of a registered bundle, registered like any other.

``register_variant(settings, version, mode)`` registers a serving bundle derived from bundle
``version``, **without its ranker** (at small catalog sizes the ranker re-orders the whole
catalog by the items' own features and would hide what was done to the retriever):

- ``"as_is"``: the same two-tower and index: the retrieval-only policy of the bundle;
- ``"shuffled"``: the two-tower artifact copied with its item vocabulary permuted at random (item
  id ``j`` gets the vector learned for another item), the FAISS index rebuilt from it: retrieval
  orders items at random with respect to what users like;
- ``"inverted"``: the same, with the rank-reversing permutation: items ordered by the model's mean
  score over its users, the item at rank ``r`` gets the vector of the item at rank ``n - 1 - r``:
  the model's favourites are shown least and its worst first — a policy clearly worse than the
  original (on tiny, the true CTR of the top-10 falls from about 0.05 to 0.01).

The variant is registered through the same registry calls as any bundle, so the service, the gates,
OPE and the A/B analysis treat it like any other version (its MLflow runs carry the params
``variant`` and ``base_bundle``). Idempotent for the same ``(version, mode, seed)``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from pipelines.core import layout
from pipelines.core.artifact_meta import require_artifact_meta, write_artifact_meta
from pipelines.core.settings import Settings
from pipelines.release import registry

log = logging.getLogger("recloop.scenarios")

MODES = ("as_is", "shuffled", "inverted")


def _permutation(mode: str, user_vecs: np.ndarray, item_vecs: np.ndarray, seed: int) -> np.ndarray:
    """``perm`` with item row ``j`` taking the vector of row ``perm[j]`` (shapes ``(n_items,)``)."""
    n = len(item_vecs)
    if mode == "shuffled":
        return np.random.default_rng(seed).permutation(n)
    mean_score = item_vecs @ user_vecs.mean(axis=0)
    order = np.argsort(-mean_score, kind="stable")  # best first
    perm = np.empty(n, dtype=np.int64)
    perm[order] = order[::-1]
    return perm


def register_variant(settings: Settings, version: str | int, mode: str, seed: int = 0) -> str:
    """Register the ``mode`` variant of bundle ``version`` (module docstring); its version."""
    from models.base import load_model
    from pipelines.core.vocab import Vocab
    from pipelines.retrieval.faiss_index import build_index

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    bundle = registry.load_bundle(settings, version)
    day = bundle["logical_date"]
    if mode == "as_is":
        mv = registry.register_bundle(
            settings, day, bundle["two_tower"]["version"], bundle["index"]["version"], None,
            bundle.get("feature_service", "serving_v1"),
        )  # fmt: skip
        return str(mv.version)

    src = Path(bundle["paths"]["two_tower"])
    variant = f"{mode}{seed}-bundle{bundle['bundle_version']}"
    root = layout.scenario_dir(settings, variant)
    tt = root / "two_tower"
    if tt.exists():
        shutil.rmtree(tt)
    shutil.copytree(src, tt)
    model = load_model(tt / "model")
    items = Vocab.load(tt / "items.json")
    item_vecs = model.item_embeddings()
    perm = _permutation(mode, model.user_embeddings(), item_vecs, seed)
    # row r of the model keeps its vector; the id written at row perm[j] is item j's id, so
    # item j is now served with the vector of row perm[j]
    ids = [""] * len(items.ids)
    for j, r in enumerate(perm):
        ids[int(r)] = items.ids[j]
    Vocab(ids).save(tt / "items.json")
    meta = require_artifact_meta(tt)
    new_version = f"{meta['version']}-{variant}"
    meta.update(version=new_version, variant=mode, variant_seed=seed)
    write_artifact_meta(tt, meta)

    index = build_index(
        item_vecs, np.array(ids), sample_queries=model.user_embeddings(),
        model_version=new_version, seed=seed,
    )  # fmt: skip
    idx_path = index.save(root / "index")

    dhash = f"{bundle['two_tower'].get('data_hash') or 'nodata'}-{variant}"
    params = {"variant": mode, "base_bundle": bundle["bundle_version"], "variant_seed": seed}
    tt_v = registry.track_component(
        settings, "two_tower", day, tt, params=params, feature_service="two_tower_v1",
        version_key=new_version, data_hash_override=dhash,
    )["version"]  # fmt: skip
    idx_v = registry.track_component(
        settings, "index", day, idx_path, params=params, version_key=new_version,
        built_from=tt, data_hash_override=dhash,
    )["version"]  # fmt: skip
    mv = registry.register_bundle(settings, day, tt_v, idx_v, None)
    log.info("registered bundle %s: bundle %s with %s item embeddings (seed %d), no ranker",
             mv.version, bundle["bundle_version"], mode, seed)  # fmt: skip
    return str(mv.version)

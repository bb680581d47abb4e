"""The metadata of an artifact folder, ``<folder>/meta.json``: its one reader and writer.

Every artifact folder under ``artifacts/`` holds one JSON object there:

- a trained model (``artifacts/models/<name>/date=D/``, written by
  :func:`pipelines.retrieval.train.save_artifact` and :func:`pipelines.ranking.train.save_ranker`):
  ``model``, ``version`` (``<name>-D``), ``trained_through``, ``window_days`` and training counts;
  a loop scenario's altered copy adds ``variant`` and ``variant_seed``
  (:mod:`pipelines.loop.scenarios`);
- a FAISS index (``artifacts/index/index-<model version>/``, written by
  :meth:`pipelines.retrieval.faiss_index.ItemIndex.save`): ``kind``, ``params``, ``recall``,
  ``recall_target``, ``model_version``, ``n_items``, ``dim``, ...

Written as indented, key-sorted JSON (non-JSON values as ``str``) with no trailing newline: the
registry hashes artifact folders, so the bytes must not change. It is written into a folder no
reader sees yet: one published atomically afterwards (:func:`pipelines.core.schema.publish_dir`)
or a scenario's fresh copy, registered afterwards.

:func:`read_artifact_meta` answers ``None`` for a folder without one; :func:`require_artifact_meta`
raises ``FileNotFoundError`` naming the file instead. Both raise ``ValueError`` naming the file
when it is unreadable or not a JSON object. What each kind must hold is checked by its reader
(e.g. :meth:`pipelines.retrieval.faiss_index.ItemIndex.load`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.core import schema

META_FILE = "meta.json"


def artifact_meta_path(folder: Path | str) -> Path:
    """``<folder>/meta.json``."""
    return Path(folder) / META_FILE


def read_artifact_meta(folder: Path | str) -> dict[str, Any] | None:
    """The metadata of the artifact in ``folder``; None when it has no ``meta.json``.

    Raises ``ValueError`` naming the file when it cannot be read or is not a JSON object."""
    return schema.read_json_file(artifact_meta_path(folder), "artifact metadata")


def require_artifact_meta(folder: Path | str) -> dict[str, Any]:
    """:func:`read_artifact_meta`, but a missing file is a ``FileNotFoundError`` naming it."""
    meta = read_artifact_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{artifact_meta_path(folder)}: no artifact metadata")
    return meta


def write_artifact_meta(folder: Path | str, meta: dict[str, Any]) -> Path:
    """Write ``meta`` to ``<folder>/meta.json`` (not atomically: see the module docstring)."""
    path = artifact_meta_path(folder)
    path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path

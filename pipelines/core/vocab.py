"""Persisted raw id <-> dense index vocabularies.

The platform speaks raw ids (strings) to the outside and dense indices ``0..n-1`` to the models.
A vocabulary is append-only: an id keeps its index forever, new ids get the next indices, so a
model trained yesterday still addresses the same rows today. Stored as JSON (a list of ids in
index order), written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


class Vocab:
    """An append-only mapping ``raw id (str) -> index (int)``."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.extend(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw_id: object) -> bool:
        return str(raw_id) in self.index

    def extend(self, ids: Iterable[object]) -> int:
        """Add unseen ids (in first-seen order); returns how many were new."""
        added = 0
        for raw in ids:
            key = str(raw)
            if key not in self.index:
                self.index[key] = len(self.ids)
                self.ids.append(key)
                added += 1
        return added

    def encode(self, ids: Iterable[object], unknown: int = -1) -> np.ndarray:
        """Raw ids → int64 indices; ids not in the vocabulary map to ``unknown``."""
        get = self.index.get
        return np.fromiter((get(str(r), unknown) for r in ids), dtype=np.int64)

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Indices → raw ids (raises ``IndexError`` for an index out of range)."""
        return [self.ids[int(i)] for i in indices]

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.ids))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Vocab:
        """Load a saved vocabulary; a missing file gives an empty one."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            ids = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a vocabulary file ({exc})") from exc
        if not isinstance(ids, list):
            raise ValueError(f"{path}: expected a JSON list of ids")
        return cls(ids)

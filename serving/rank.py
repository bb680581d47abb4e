"""The rank stage: the bundle's ranker scores a request's hydrated candidates in one batch.

Its input is built as arrays (no DataFrame): dense features straight into the float32 matrix,
text categories encoded once per distinct value and ranker (remembered across requests). The
pipeline falls back to the retrieval order when there is no ranker or it fails.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import pandas as pd

from serving.bundle import LoadedBundle
from serving.hydrate import Hydrated


def score_candidates(bundle: LoadedBundle, online: Hydrated) -> np.ndarray:
    """Click probabilities ``(C,)`` of the hydrated candidates, in one batch.

    Dense columns go straight into the float32 matrix the network takes (raw values: the
    network normalizes them and replaces non-finite ones), sparse ones through the ranker's own
    vocabulary/hash encoding (:func:`sparse_codes`); the result equals
    ``ranker.predict_proba`` on the same rows."""
    import torch

    ranker = bundle.ranker
    n = len(next(iter(online.items.values()))) if online.items else 0
    dense = np.empty((n, len(ranker.dense_features)), dtype=np.float32)
    for j, name in enumerate(ranker.dense_features):
        col = online.items.get(name)
        dense[:, j] = online.user[name] if col is None else col
    sparse = sparse_codes(ranker, online, n)
    logits = ranker.predict_logits(torch.from_numpy(dense), torch.from_numpy(sparse))
    return torch.sigmoid(logits).cpu().numpy().astype(np.float64)


_codes_lock = threading.Lock()
_codes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CODES_MAX = 200_000
"""Distinct values remembered per sparse feature and ranker (beyond: forgotten, recomputed)."""


def sparse_codes(ranker: Any, online: Hydrated, n: int) -> np.ndarray:
    """The ranker's bucket indices ``(n, F)`` int64 of the candidates' sparse features.

    Text columns (object arrays, and a user's text value repeated) are encoded once per
    distinct value and ranker (``ranker.encode_sparse_text`` on the new values, the same codes
    as ``encode_sparse_column`` without its pandas Series; remembered): a text category's code
    does not depend on the other rows. Numeric categories, whose text depends on the whole
    column (whole floats as integers), are encoded as a column, but a user's number repeated on
    every row (the constant ``slot``): its column's text is its own (:func:`_number_code`)."""
    names = ranker.sparse_features
    with _codes_lock:
        memo = _codes.get(ranker)
        if memo is None:
            memo = _codes[ranker] = {name: {} for name in names}
    out = np.empty((n, len(names)), dtype=np.int64)
    numeric: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        col = online.items.get(name)
        if col is None:  # a user feature: one value for every row
            v = online.user[name]
            if isinstance(v, str):
                out[:, j] = _text_codes(ranker, memo[name], j, [v])[0]
            else:
                out[:, j] = _number_code(ranker, memo[name], j, v)
        elif col.dtype == object:
            out[:, j] = _text_codes(ranker, memo[name], j, col)
        else:
            numeric[name] = col
    for j, name in enumerate(names):
        if name in numeric:
            out[:, j] = ranker.encode_sparse_column(j, pd.Series(numeric[name]))
    return out


def _number_code(ranker: Any, memo: dict, j: int, value: Any) -> int:
    """The code of sparse feature ``j`` for a column of ``value`` (a number, or None) on every
    row: that of a one-row float64 column of it (a constant column is whole, or not, as its one
    value is; missing as it is), remembered under ``("number", value)`` (apart from text keys;
    NaN is not remembered: it never compares equal)."""
    x = np.full(1, value, dtype=np.float64)
    key = ("number", float(x[0]))
    code = memo.get(key)
    if code is None:
        code = int(ranker.encode_sparse_column(j, pd.Series(x))[0])
        if key[1] == key[1]:
            with _codes_lock:
                memo[key] = code
    return code


def _text_codes(ranker: Any, memo: dict, j: int, values: Any) -> np.ndarray:
    """Codes ``(len(values),)`` of sparse feature ``j`` for object ``values``, via ``memo``."""
    get = memo.get
    codes = [get(v, -1) for v in values]
    if -1 in codes:
        new = list(dict.fromkeys(v for v, c in zip(values, codes, strict=True) if c == -1))
        if all(isinstance(v, str) for v in new):  # text: no Series (equal codes)
            found = ranker.encode_sparse_text(j, new).tolist()
        else:
            found = ranker.encode_sparse_column(j, pd.Series(new, dtype=object)).tolist()
        learnt = dict(zip(new, found, strict=True))
        with _codes_lock:
            if len(memo) + len(learnt) > _CODES_MAX:
                memo.clear()
            memo.update(learnt)
        codes = [learnt[v] if c == -1 else c for v, c in zip(values, codes, strict=True)]
    return np.asarray(codes, dtype=np.int64)

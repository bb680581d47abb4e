"""The route stage: a sticky A/B arm per user.

A user's bucket is ``sha256(salt:experiment:user_id)``'s first 8 bytes as a number in [0, 1);
below ``challenger_share`` → ``challenger`` (when one is loaded), else ``champion``. The same
user gets the same arm for as long as the salt and experiment stay the same.
"""

from __future__ import annotations

import hashlib

from serving.bundle import LoadedBundle
from serving.engine import Engine


def bucket(user_id: str, salt: str, experiment: str) -> float:
    """The user's sticky position in [0, 1) for ``experiment`` under ``salt``."""
    h = hashlib.sha256(f"{salt}:{experiment}:{user_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def route(engine: Engine, user_id: str) -> tuple[str, LoadedBundle | None]:
    """``(arm, bundle)``; the challenger only when loaded and the user's bucket falls in it."""
    cfg = engine.config
    challenger = engine.bundles.get("challenger")
    if challenger is not None and bucket(user_id, cfg.salt, cfg.experiment) < cfg.challenger_share:
        return "challenger", challenger
    return "champion", engine.bundles.get("champion")

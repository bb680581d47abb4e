"""Each user's recent positive items, online in Redis: the sequence serving reads (issues 14, 16).

One sorted set per user, key :func:`sequence_key` (``recloop:seq:{<user_id>}``; the braces make
the user id the key's hash tag on a Redis Cluster), member = item id, score = the item's latest
positive event time (epoch milliseconds, UTC): ``ZRANGE key 0 -1`` is the user's last
:attr:`SequenceSettings.length` distinct positive items (click, purchase, rating), oldest first.
An item engaged with again moves to the end (its score only grows: ``ZADD GT``).

Two writers, one Lua script (:data:`SCRIPT`, atomic per user, one key: Cluster-safe):

- :func:`rebuild` (day D, by the daily ``materialize`` task after the Feast materialization, or
  ``python -m pipelines.features.sequences --date D``): for each user with positives in the
  validated logs of ``[D - days + 1, D]``, the entries up to the end of D are replaced by the
  logs' last ``length`` items, the entries after the end of D (appended by the service from
  D+1's feedback) are kept, and the set is trimmed to ``length``; a user with a sequence but no
  positive in the window keeps only their entries after D (a ``SCAN`` over the prefix). A rerun
  of D writes the same thing; nothing appended after D is lost. Pipelined in batches of
  :data:`BATCH_USERS` users, a log line per batch.
- :func:`append` (``POST /feedback``, :mod:`serving.feedback`): ``ZADD GT`` + trim, one round trip.

Settings (environment): ``RECLOOP_SEQUENCE_LENGTH`` (default 50 items per user),
``RECLOOP_SEQUENCE_DAYS`` (default 28 days of validated logs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings, env_int

log = logging.getLogger("recloop.features.sequences")

PREFIX = "recloop:seq:"
"""Key prefix of the per-user sequences (:func:`sequence_key`)."""
POSITIVE_EVENTS = ("click", "purchase", "rating")
"""Events that put an item in a user's sequence (the retrieval training data's positives)."""
BATCH_USERS = 2_000
"""Users per pipelined write of :func:`rebuild`."""

SCRIPT = """
if ARGV[1] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
return redis.call('ZCARD', KEYS[1])
"""
"""One user's write: ``KEYS[1]`` the sequence; ``ARGV``: the cutoff (entries scored at most it
removed first; ``''``: none), the length to trim to, then ``score, item`` pairs (``ZADD GT``: an
item already there keeps the later time). Returns the sequence's length."""


@dataclass(frozen=True)
class SequenceSettings:
    """``length``: items kept per user; ``days``: validated days a rebuild reads."""

    length: int = 50
    days: int = 28

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SequenceSettings:
        """Defaults, then ``RECLOOP_SEQUENCE_LENGTH`` / ``RECLOOP_SEQUENCE_DAYS``;
        ``ValueError`` naming the variable when one is not a positive integer."""
        env = os.environ if env is None else env
        out = cls(
            length=env_int(env, "RECLOOP_SEQUENCE_LENGTH", cls.length),
            days=env_int(env, "RECLOOP_SEQUENCE_DAYS", cls.days),
        )
        for name, value in (("LENGTH", out.length), ("DAYS", out.days)):
            if value < 1:
                raise ValueError(f"RECLOOP_SEQUENCE_{name}={value}: must be a positive integer")
        return out


def sequence_key(user_id: str) -> str:
    """The Redis key of ``user_id``'s sequence."""
    return f"{PREFIX}{{{user_id}}}"


def user_of(key: bytes | str) -> str:
    """The user id of a :func:`sequence_key`."""
    text = key.decode() if isinstance(key, bytes) else key
    return text[len(PREFIX) + 1 : -1]


def epoch_ms(ts: pd.Timestamp | dt.datetime) -> int:
    """A time as integer epoch milliseconds (UTC; a naive time is read as UTC)."""
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


def day_end_ms(day: dt.date) -> int:
    """Epoch ms of the last millisecond of ``day`` (UTC): the rebuild's cutoff."""
    return epoch_ms(pd.Timestamp(day + dt.timedelta(days=1))) - 1


def read_recent(settings: Settings, day: dt.date, cfg: SequenceSettings) -> pd.DataFrame:
    """Each user's last ``cfg.length`` distinct positive items of the validated days
    ``[day - days + 1, day]``: ``user_id``, ``item_id``, ``t`` (latest event, epoch ms), sorted
    by user then time (ties by item id)."""
    import duckdb

    from pipelines.core.duckdb_sql import sql_list
    from pipelines.core.validated import validated_files

    files = validated_files(settings, day - dt.timedelta(days=cfg.days - 1), day)
    if not files:
        return pd.DataFrame({"user_id": [], "item_id": [], "t": []})
    events = ", ".join(f"'{e}'" for e in POSITIVE_EVENTS)
    with duckdb.connect() as con:
        return con.execute(
            f"""
            WITH last AS (
                SELECT user_id, item_id, max(epoch_ms(ts)) AS t
                FROM read_parquet({sql_list(files)})
                WHERE event IN ({events}) AND user_id IS NOT NULL AND item_id IS NOT NULL
                GROUP BY user_id, item_id
            )
            SELECT user_id, item_id, t FROM last
            QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY t DESC, item_id DESC) <= ?
            ORDER BY user_id, t, item_id
            """,
            [cfg.length],
        ).df()


def _write_batch(client: Any, writes: list[tuple[str, list[Any]]]) -> None:
    """One pipelined round trip (per node on a Cluster) of :data:`SCRIPT` calls (``EVAL`` as a
    plain command: a Cluster pipeline routes it by its key, it has no ``eval`` method)."""
    pipe = client.pipeline(transaction=False)
    for key, args in writes:
        pipe.execute_command("EVAL", SCRIPT, 1, key, *args)
    pipe.execute()


def _stale_keys(client: Any, written: set[str]) -> list[str]:
    """Sequence keys of users the rebuild did not write (``SCAN``, every node of a Cluster)."""
    out = []
    for key in client.scan_iter(match=f"{PREFIX}*", count=1_000):
        text = key.decode() if isinstance(key, bytes) else key
        if text not in written:
            out.append(text)
    return out


def rebuild(
    settings: Settings, date: str | dt.date, cfg: SequenceSettings | None = None
) -> dict[str, Any]:
    """Write day ``date``'s sequences to Redis (the module docstring); returns ``{"date",
    "users", "items", "stale_users", "seconds"}``. ``ConnectionError`` naming the URL when
    Redis does not answer."""
    from pipelines.features import online

    cfg = cfg or SequenceSettings.from_env()
    day = schema.parse_date(date)
    t0 = time.perf_counter()
    recent = read_recent(settings, day, cfg)
    cutoff = str(day_end_ms(day))
    trim = str(cfg.length)
    written: set[str] = set()
    with online.connection_errors(settings.redis_url):
        client = online.redis_client(settings)
        batch: list[tuple[str, list[Any]]] = []
        for user, rows in recent.groupby("user_id", sort=True):
            args: list[Any] = [cutoff, trim]
            for item, t in zip(rows["item_id"].tolist(), rows["t"].tolist(), strict=True):
                args += [int(t), str(item)]
            key = sequence_key(str(user))
            batch.append((key, args))
            written.add(key)
            if len(batch) == BATCH_USERS:
                _write_batch(client, batch)
                log.info("sequences %s: %d users written (%.2fs)", day, len(written),
                         time.perf_counter() - t0)  # fmt: skip
                batch = []
        stale = _stale_keys(client, written)
        batch += [(key, [cutoff, trim]) for key in stale]
        for i in range(0, len(batch), BATCH_USERS):
            _write_batch(client, batch[i : i + BATCH_USERS])
    out = {"date": day.isoformat(), "users": len(written), "items": int(len(recent)),
           "stale_users": len(stale), "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    log.info("sequences %s: %d users, %d items (last %d of %d days), %d stale users cut, "
             "in %.2fs", day, out["users"], out["items"], cfg.length, cfg.days,
             out["stale_users"], out["seconds"])  # fmt: skip
    return out


def append(client: Any, user_id: str, item_id: str, when_ms: int, length: int) -> int:
    """Append ``item_id`` (engaged with at ``when_ms``) to ``user_id``'s sequence and trim it to
    ``length``, atomically, in one round trip; returns the sequence's length. redis-py errors
    propagate."""
    return int(client.eval(SCRIPT, 1, sequence_key(user_id), "", str(length), when_ms, item_id))


def read(client: Any, user_id: str) -> list[str]:
    """``user_id``'s sequence, oldest first (``[]`` when there is none); one ``ZRANGE``.
    redis-py errors propagate."""
    return [m.decode() if isinstance(m, bytes) else m for m in client.zrange(
        sequence_key(user_id), 0, -1)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.features.sequences --date D``: :func:`rebuild` of day D."""
    parser = argparse.ArgumentParser(description="rebuild the online user sequences of day D")
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(rebuild(Settings.from_env(), args.date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

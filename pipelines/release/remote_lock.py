"""The registry's alias lock when MLflow is a tracking server shared by several machines.

With a local registry (SQLite file) the lock is a file on the one machine
(:func:`pipelines.release.registry.registry_lock`). With ``RECLOOP_MLFLOW_URI`` an ``http://``
server, the gates, the A/B DAG and operators may run on different machines (Celery workers,
Kubernetes pods) that share no folder: the lock then lives in the online store's Redis, which
every one of them reaches already (``SET key token NX PX ttl``; released by a compare-and-delete
script, so a holder never deletes a lock that expired and passed to another).

The key is ``recloop:registry-lock:<sha256(mlflow uri)[:16]>``: one lock per registry. The TTL
(:data:`TTL_MS`) bounds how long a crashed holder blocks the others; the critical sections (read,
compare, set one alias; register one version) take well under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator

TTL_MS = 120_000
"""Lock lifetime (ms): a holder that died releases it after this."""
WAIT_S = 300.0
"""How long a contender waits for the lock before giving up with ``TimeoutError``."""

RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RegistryLockUnavailable(RuntimeError):
    """The Redis that holds the registry lock did not answer."""


def lock_key(mlflow_uri: str) -> str:
    """The Redis key of the lock of the registry at ``mlflow_uri``."""
    return "recloop:registry-lock:" + hashlib.sha256(mlflow_uri.encode()).hexdigest()[:16]


@contextlib.contextmanager
def redis_lock(
    redis_url: str, mlflow_uri: str, *, ttl_ms: int = TTL_MS, wait_s: float = WAIT_S
) -> Iterator[None]:
    """Hold the registry lock of ``mlflow_uri`` in the Redis at ``redis_url`` for the ``with``
    block. Raises :class:`RegistryLockUnavailable` when Redis does not answer, ``TimeoutError``
    when another holder keeps it ``wait_s`` seconds."""
    import redis

    from pipelines.features.redis_client import make_client

    client = make_client(redis_url, 5.0)  # one server or a Redis Cluster (one key: one slot)
    key, token = lock_key(mlflow_uri), uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    try:
        while not client.set(key, token, nx=True, px=ttl_ms):
            if time.monotonic() > deadline:
                raise TimeoutError(f"registry lock {key} at {redis_url} held for over {wait_s} s")
            time.sleep(0.02)
    except redis.RedisError as exc:
        raise RegistryLockUnavailable(
            f"the lock of the MLflow registry at {mlflow_uri} lives in the Redis at {redis_url}, "
            f"which did not answer ({exc}); promotions and registrations wait for it"
        ) from exc
    try:
        yield
    finally:
        with contextlib.suppress(redis.RedisError):  # an unreleased lock expires after ttl_ms
            client.eval(RELEASE, 1, key, token)
        client.close()

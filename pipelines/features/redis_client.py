"""The one place a Redis client is built: one server or a Redis Cluster, named by one URL.

``RECLOOP_REDIS_URL`` (``Settings.redis_url``) names either

- **one server**: ``redis://[:password@]host:port/db`` → ``redis.Redis`` (``rediss://`` and
  ``unix://`` as redis-py reads them), or
- **a Redis Cluster**: ``redis+cluster://[:password@]host:port,host:port,...`` → seed nodes
  (any nodes of the cluster; name several so that a client starts while one is down) →
  ``redis.cluster.RedisCluster``, which discovers the other nodes and maps the 16384 hash slots
  to them. Database 0 only (a cluster has no other): no path, or ``/0``.

:func:`make_client` builds either with 1 s socket timeouts and no hidden retries (a dead node
fails fast: serving's breaker and the DAG's task retries decide what happens next); a cluster
client also refreshes its slot map after a connection error, so reads reach the replica that
took over a dead master. ``infra/redis-cluster.sh`` starts a local cluster and prints its URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pipelines.core.redact import redact_url

CLUSTER_SCHEME = "redis+cluster"
"""URL scheme of a Redis Cluster: ``redis+cluster://host:port,host:port,...``."""


@dataclass(frozen=True)
class ClusterTarget:
    """A parsed ``redis+cluster://`` URL: seed ``nodes`` ``((host, port), ...)`` and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``)."""
    return url.lower().startswith(CLUSTER_SCHEME + "://")


def parse_cluster_url(url: str) -> ClusterTarget:
    """``redis+cluster://[[user]:password@]host:port,host:port,...[/0]`` → :class:`ClusterTarget`.

    ``ValueError`` naming the URL (password masked) for anything else: another scheme, no node,
    a node without ``host:port``, a port that is not a number in 1..65535, a database other
    than 0, a query string."""
    shown = redact_url(url)
    usage = f"RECLOOP_REDIS_URL={shown!r}: expected {CLUSTER_SCHEME}://host:port,host:port,..."
    if not is_cluster_url(url):
        raise ValueError(usage)
    rest = url[len(CLUSTER_SCHEME) + 3 :]
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0") or "?" in rest or "#" in rest:
        raise ValueError(f"{usage} (a Redis Cluster has database 0 only, and no options)")
    userinfo, _, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{usage} (bad node {part.strip()!r})")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterTarget(
        nodes=tuple(nodes),
        username=unquote(user) or None,
        password=unquote(password) if userinfo and password else None,
    )


def make_client(url: str, timeout_s: float) -> Any:
    """A redis-py client for ``url``: ``redis.Redis`` or, for a ``redis+cluster://`` URL,
    ``redis.cluster.RedisCluster`` (its slot map read from the first seed node that answers).

    ``timeout_s``: connect and read timeout of every socket (s); no retries. ``ValueError`` for
    a malformed cluster URL; ``redis.ConnectionError`` when no seed node of a cluster answers."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **timeouts)
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException

    target = parse_cluster_url(url)
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            retry=Retry(NoBackoff(), 0),
            **timeouts,
        )
    except RedisClusterException as exc:  # no seed node answered (or the slots are not covered)
        raise redis.ConnectionError(f"Redis Cluster {redact_url(url)}: {exc}") from exc


# --- one round trip on a cluster ---------------------------------------------------------


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` is a ``redis.cluster.RedisCluster`` (from :func:`make_client`)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def cluster_round_trip(client: Any, keys: list[bytes], pack: Callable[[list[int]], bytes]) -> list:
    """Replies of single-key commands on a ``RedisCluster``, in the commands' order: command
    ``i`` reads ``keys[i]``; ``pack(indices)`` is the RESP bytes of the commands ``indices``
    (one node's share, ascending), in that order.

    The commands are grouped by the primary serving their key's hash slot (the client's slot
    map), each group sent as one write on a pooled connection of its node, all groups written
    before any reply is read: one round trip's latency, not one per node (at most 3 groups on
    3 masters, whatever the number of commands).

    A node that does not answer (refused, reset, past the socket timeout): the slot map is read
    again (the node asked last from now on), so once its replica has been promoted the next
    call reaches it, and redis-py's ``ConnectionError`` is raised. A ``MOVED`` reply (slots
    moved since the map was read: a failover seen first by the server) reads the map again and
    retries once. ``CLUSTERDOWN``, ``TRYAGAIN``, ``ASK`` (a slot being migrated) and a slot no
    node serves: ``redis.ConnectionError`` (the rows are not reachable now)."""
    import redis
    from redis.exceptions import MovedError, RedisClusterException, ResponseError

    for attempt in (1, 2):
        try:
            return _send_by_node(client, keys, pack)
        except (redis.ConnectionError, redis.TimeoutError):
            _refresh_slots(client)
            raise
        except MovedError:
            _refresh_slots(client)
            if attempt == 2:
                raise redis.ConnectionError("Redis Cluster: slots still moving") from None
        except (ResponseError, RedisClusterException) as exc:
            if not _is_cluster_state_error(exc):
                raise  # a wrong command or reply: not the cluster's state
            _refresh_slots(client)
            raise redis.ConnectionError(f"Redis Cluster not serving the read: {exc}") from exc
    raise AssertionError("unreachable")


def _is_cluster_state_error(exc: Exception) -> bool:
    from redis.exceptions import AskError, ClusterError, RedisClusterException, TryAgainError

    return isinstance(exc, (AskError, ClusterError, RedisClusterException, TryAgainError))


def _send_by_node(client: Any, keys: list[bytes], pack: Callable[[list[int]], bytes]) -> list:
    """One write per primary, then its replies (see :func:`cluster_round_trip`)."""
    import redis
    from redis.crc import key_slot

    manager = client.nodes_manager
    slots = manager.slots_cache  # slot -> [primary, replicas...]; replaced whole on a refresh
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, key in enumerate(keys):
        slot = key_slot(key)
        node = slots[slot][0] if slots.get(slot) else manager.get_node_from_slot(slot)  # raises
        groups.setdefault(node.name, (node, []))[1].append(i)
    replies: list[Any] = [None] * len(keys)
    taken: list[tuple[Any, Any, Any, list[int]]] = []  # (node, pool, connection, indices)
    at = None  # the node being written to or read from
    try:
        for at, idx in groups.values():
            pool = client.get_redis_connection(at).connection_pool
            taken.append((at, pool, pool.get_connection(), idx))
            taken[-1][2].send_packed_command([pack(idx)])
        for node, _, conn, idx in taken:
            at = node
            for i in idx:
                replies[i] = conn.read_response()
    except BaseException as exc:
        for _, _, conn, _ in taken:
            conn.disconnect()  # a half-read reply stream must not go back to the pool
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and at is not None:
            client.nodes_manager.move_node_to_end_of_cached_nodes(at.name)
        raise
    finally:
        for _, pool, conn, _ in taken:
            pool.release(conn)
    return replies


def _refresh_slots(client: Any) -> None:
    """Read the cluster's slot map again (from the first seed that answers); nothing if none
    does (the next call tries again)."""
    import logging

    try:
        client.nodes_manager.initialize()
    except Exception as exc:  # noqa: BLE001 - the caller raises its own error
        logging.getLogger(__name__).debug("Redis Cluster slot map not refreshed: %r", exc)

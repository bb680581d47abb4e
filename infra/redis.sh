#!/usr/bin/env bash
# Start (default) or stop the workspace's redis-server on loopback.
#   infra/redis.sh [start|stop|status]
# Port and host come from RECLOOP_REDIS_URL (default redis://127.0.0.1:6399/0); pid and log files
# live under RECLOOP_HOME. No persistence (--save ""): the online store is rebuilt by materialize.
#
# Bounded: --maxmemory (RECLOOP_REDIS_MAXMEMORY, default 1gb) with --maxmemory-policy
# (RECLOOP_REDIS_POLICY, default volatile-ttl). The server holds the online features (database 0,
# no TTL) and, with `recloop serve --workers N`, the request records for /feedback (database 1,
# each with a TTL; serving/shared.py). volatile-ttl evicts only keys that expire, soonest first:
# request records make room for each other and never push out a feature row; once features alone
# fill the memory, writes fail (materialize errors out, like noeviction) rather than dropping
# rows that serving would then silently replace by defaults. allkeys-lru would evict features.
# For request records on an instance of their own (RECLOOP_SERVE_SHARED_REDIS_URL), start it with
# RECLOOP_REDIS_URL set to that URL and RECLOOP_REDIS_POLICY=allkeys-lru.
set -euo pipefail
action=${1:-start}
url=${RECLOOP_REDIS_URL:-redis://127.0.0.1:6399/0}
case "$url" in redis+cluster://*) echo "redis: $url names a Redis Cluster: use infra/redis-cluster.sh" >&2; exit 2;; esac
maxmemory=${RECLOOP_REDIS_MAXMEMORY:-1gb}
policy=${RECLOOP_REDIS_POLICY:-volatile-ttl}
home=${RECLOOP_HOME:-$HOME/.recloop}
hostport=${url#redis://}; hostport=${hostport%%/*}; hostport=${hostport##*@}
host=${hostport%%:*}; port=${hostport##*:}
[ "$port" = "$hostport" ] && port=6379
mkdir -p "$home"
pidfile="$home/redis-$port.pid"
case "$action" in
  start)
    if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
      echo "redis: already answering on $host:$port"; exit 0
    fi
    case "$host" in 127.*|localhost) ;; *) echo "redis: $host is not loopback; start it yourself" >&2; exit 1;; esac
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
      --maxmemory "$maxmemory" --maxmemory-policy "$policy" \
      --pidfile "$pidfile" --logfile "$home/redis-$port.log" --dir "$home"
    for _ in $(seq 50); do redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -h "$host" -p "$port" ping >/dev/null && echo "redis: started on $host:$port, maxmemory $maxmemory ($policy) (log $home/redis-$port.log)";;
  stop)
    redis-cli -h "$host" -p "$port" shutdown nosave >/dev/null 2>&1 || true; echo "redis: stopped $host:$port";;
  status)
    redis-cli -h "$host" -p "$port" ping;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2;;
esac

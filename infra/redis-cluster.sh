#!/usr/bin/env bash
# Start (default), stop or show a local Redis Cluster for the online store: 3 masters, each with
# one replica, on loopback.
#   infra/redis-cluster.sh [start|stop|status]
# Ports RECLOOP_REDIS_CLUSTER_PORT .. +5 (default 7000; each node also uses its port + 10000 for
# the cluster bus). Each node's files (nodes.conf, pid, log) live in
# $RECLOOP_HOME/redis-cluster/<port>/. No persistence (--save ""), as infra/redis.sh: the online
# store is rebuilt by materialize. Then point recloop at it with the URL `start` prints:
#   RECLOOP_REDIS_URL=redis+cluster://127.0.0.1:7000,127.0.0.1:7001,...
#
# A master that stops answering is marked failed after --cluster-node-timeout
# (RECLOOP_REDIS_CLUSTER_NODE_TIMEOUT_MS, default 1500) and its replica is promoted;
# --cluster-require-full-coverage no keeps the other masters answering meanwhile, and
# --cluster-replica-validity-factor 0 lets a replica take over however long ago it last heard
# from its master (availability first: a stale row is rewritten by the next materialize).
# Memory: --maxmemory / --maxmemory-policy as infra/redis.sh (RECLOOP_REDIS_MAXMEMORY per node,
# RECLOOP_REDIS_POLICY, default volatile-ttl: only expiring keys are evicted, never a feature row).
# `start` on a running cluster does nothing; after a node died it restarts that node, which
# rejoins (as a replica if it was failed over). `stop` shuts all nodes down and forgets the
# cluster (nodes.conf removed): the next `start` creates a new one.
set -euo pipefail
action=${1:-start}
base=${RECLOOP_REDIS_CLUSTER_PORT:-7000}
node_timeout=${RECLOOP_REDIS_CLUSTER_NODE_TIMEOUT_MS:-1500}
maxmemory=${RECLOOP_REDIS_MAXMEMORY:-1gb}
policy=${RECLOOP_REDIS_POLICY:-volatile-ttl}
home=${RECLOOP_HOME:-$HOME/.recloop}
root="$home/redis-cluster"
host=127.0.0.1
ports=()
for i in 0 1 2 3 4 5; do ports+=("$((base + i))"); done

nodes=()
for p in "${ports[@]}"; do nodes+=("$host:$p"); done

answers() { redis-cli -h "$host" -p "$1" ping >/dev/null 2>&1; }
info() {  # info <port> <section> <field>: the field's value in INFO / CLUSTER INFO
  local cmd=(info "$2"); [ "$2" = cluster ] && cmd=(cluster info)
  redis-cli -h "$host" -p "$1" "${cmd[@]}" 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"
}
state() { info "$1" cluster cluster_state; }
url() { local IFS=,; echo "redis+cluster://${nodes[*]}"; }

start_node() {
  local p=$1 dir="$root/$1"
  mkdir -p "$dir"
  redis-server --port "$p" --bind "$host" --save "" --appendonly no --daemonize yes \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
    --cluster-node-timeout "$node_timeout" --cluster-require-full-coverage no \
    --cluster-replica-validity-factor 0 --repl-diskless-sync-delay 0 \
    --maxmemory "$maxmemory" --maxmemory-policy "$policy" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
}

fail() { echo "redis-cluster: $*" >&2; exit 1; }

wait_for() {  # wait_for <seconds> <command...>: until the command succeeds
  local tries=$(($1 * 10)); shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.1; done
  "$@"
}

all_ok() {
  local p
  for p in "${ports[@]}"; do [ "$(state "$p")" = ok ] || return 1; done
}

replicas_synced() {
  local p n=0
  for p in "${ports[@]}"; do
    [ "$(info "$p" replication master_link_status)" = up ] && n=$((n + 1))
  done
  [ "$n" -ge 3 ]
}

all_answer() {
  local p
  for p in "${ports[@]}"; do answers "$p" || return 1; done
}

start() {
  local p fresh=1
  for p in "${ports[@]}"; do
    if answers "$p"; then
      continue
    fi
    [ -s "$root/$p/nodes.conf" ] && fresh=0
    start_node "$p"
  done
  wait_for 10 all_answer || fail "nodes did not start (logs: $root/*/redis.log)"
  if [ "$fresh" = 1 ] && [ "$(info "$base" cluster cluster_known_nodes)" = 1 ]; then
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
      >"$root/create.log" 2>&1 || fail "cluster create failed: $(cat "$root/create.log")"
  fi
  wait_for 30 all_ok || fail "cluster_state is not ok after 30 s"
  wait_for 30 replicas_synced || fail "replicas not in sync with their masters after 30 s"
  echo "redis-cluster: 3 masters + 3 replicas on $host:${ports[0]}-${ports[5]} (files $root)"
  echo "RECLOOP_REDIS_URL=$(url)"
}

alive() { [ -s "$root/$1/redis.pid" ] && kill -0 "$(cat "$root/$1/redis.pid")" 2>/dev/null; }
gone() { ! answers "$1" && ! alive "$1"; }

stop() {
  local p
  for p in "${ports[@]}"; do
    redis-cli -h "$host" -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  for p in "${ports[@]}"; do
    wait_for 10 gone "$p" || fail "$host:$p did not stop"
    # nodes.conf is written at shutdown: removed, the next start creates a new cluster
    rm -f "$root/$p/nodes.conf" "$root/$p/dump.rdb" "$root/$p/redis.pid"
  done
  echo "redis-cluster: stopped $host:${ports[0]}-${ports[5]}"
}

status() {
  local p role rc=0
  for p in "${ports[@]}"; do
    if answers "$p"; then
      role=$(redis-cli -h "$host" -p "$p" role | head -n 1)
      echo "$host:$p $role cluster_state:$(state "$p")"
      [ "$(state "$p")" = ok ] || rc=1
    else
      echo "$host:$p down"; rc=1
    fi
  done
  echo "RECLOOP_REDIS_URL=$(url)"
  return "$rc"
}

case "$action" in
  start) start;;
  stop) stop;;
  status) status;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2;;
esac

#!/usr/bin/env bash
# Per service day of a finished `recloop demo` workspace: the champion that served day D replayed
# on D's users with what the service had that day (D-1's features re-materialized into Redis;
# `recloop stages` loads D-1's item table), variants trending, full and retrieval_only; one line
# per day with each variant's true CTR and distinct items, full / trending, and full's stage
# funnel (`recloop stages`: oracle, best of the candidates, score order, served, recall, and the
# top candidates by what a model knowing part of the truth would rank them).
#
#   RECLOOP_HOME=/tmp/rl/d10e RECLOOP_REDIS_URL=redis://127.0.0.1:6436/0 \
#       bash benchmarks/perday_stages.sh [FIRST_DAY LAST_DAY (default 6 10)] [USERS (default 1500)]
#
# Leaves D-1 of the last day materialized: re-materialize the newest day before serving again.
# The JSON documents go to $RECLOOP_HOME/reports/stages-D.json.
set -euo pipefail
: "${RECLOOP_HOME:?set RECLOOP_HOME to a demo workspace}"
: "${RECLOOP_REDIS_URL:?set RECLOOP_REDIS_URL to its Redis}"
first=${1:-6}
last=${2:-10}
users=${3:-1500}
repo=$(cd "$(dirname "$0")/.." && pwd)
recloop="$repo/.venv/bin/recloop"
export OMP_WAIT_POLICY=PASSIVE RECLOOP_SERVE_DEADLINE_MS=5000
bash "$repo/infra/redis.sh" start >/dev/null
for n in $(seq "$first" "$last"); do
  day=$(printf '2026-01-%02d' "$n")
  before=$(date -d "$day -1 day" +%F)
  version=$(python3 -c "
import json, sys
days = {r['date']: r for r in json.load(open(sys.argv[1]))}
print(days[sys.argv[2]]['aliases_before']['champion'])" "$RECLOOP_HOME/reports/loop/days.json" "$day")
  "$recloop" features materialize --date "$before" --force >/dev/null 2>&1
  out="$RECLOOP_HOME/reports/stages-$day.json"
  "$recloop" stages --date "$day" --bundle "$version" --users "$users" \
    --variants trending,full,retrieval_only --json 2>/dev/null >"$out"
  python3 -c "
import json, sys
v = json.load(open(sys.argv[1]))['variants']
cells = {k: (round(x['true_ctr'], 4), x['distinct_items']) for k, x in v.items()}
f = v['full'].get('funnel') or {}
funnel = {k: round(x, 4) for k, x in f.items() if isinstance(x, float)}
funnel.update({k: round(x, 4) for k, x in (f.get('known') or {}).items()})
print(sys.argv[2], 'bundle', sys.argv[3], cells, 'full/trending',
      round(v['full']['true_ctr'] / v['trending']['true_ctr'], 3), 'funnel(full)', funnel)" "$out" "$day" "$version"
done

#!/usr/bin/env bash
# Quick start: set up everything, start a local redis-server, and run the main job (recloop demo)
# on simulated data in RECLOOP_HOME (default ~/.recloop). Extra arguments go to `recloop demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in  # --help explains without setting up or starting anything (once set up)
  *" -h "*|*" --help "*) [ -x .venv/bin/recloop ] && exec .venv/bin/recloop demo --help ;;
esac
bash infra/setup.sh
bash infra/redis.sh start
exec .venv/bin/recloop demo "$@"

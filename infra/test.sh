#!/usr/bin/env bash
# The test command: set up, lint, and run the whole test suite. Tests start their own
# redis-server (the real binary) on a free loopback port and use temporary workspaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
if [ -f infra/setup-browser.sh ]; then
  bash infra/setup-browser.sh
fi
shellcheck infra/*.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# two pytest workers (RECLOOP_TEST_WORKERS; 0 runs in this process), whole files per worker so a
# module's fixtures (trained workspaces, servers) are built once; the slowest tests are listed
exec .venv/bin/python -m pytest -q -n "${RECLOOP_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"

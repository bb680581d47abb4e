#!/usr/bin/env bash
# Set up the browser test tier (tests/browser/): Debian's chromium (installed with apt-get when
# missing; Playwright's own browser download is not used) and the pinned Playwright for Python in
# .venv (run infra/setup.sh first: it creates .venv from requirements.lock, which pins playwright
# too; this script only checks, or installs the pin when .venv lacks it). Idempotent: a second run
# only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAYWRIGHT=$(grep -E '^playwright==' requirements.lock)

if [ ! -x .venv/bin/python ]; then
  echo "setup-browser: no .venv: run infra/setup.sh first" >&2
  exit 1
fi

if ! command -v chromium >/dev/null; then
  echo "setup-browser: installing chromium (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if ! .venv/bin/python -c 'import playwright' >/dev/null 2>&1; then
  echo "setup-browser: installing $PLAYWRIGHT"
  .venv/bin/pip install -q "$PLAYWRIGHT" 2>&1 | grep -v '^WARNING: Location' || true
fi
.venv/bin/python -c 'import playwright.sync_api' \
  || { echo "setup-browser: playwright failed to import" >&2; exit 1; }
echo "setup-browser: ready ($(chromium --version 2>/dev/null | head -1), $PLAYWRIGHT)"

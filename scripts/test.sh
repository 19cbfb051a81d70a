#!/usr/bin/env bash
# Run every check: lint, type check of the core, and all tests (unit, interop with a real strongSwan,
# network-namespace scenarios, web over real lighttpd/Chromium/PostgreSQL). Needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy --strict core_ike"; mypy --strict core_ike
echo "== lint-imports (the sans-IO import contracts, .importlinter)"; lint-imports
echo "== pytest"
mkdir -p test-output
export IKEME_REQUIRE_ALL=1  # tests/conftest.py: a missing component fails, it is never skipped
# Most of the suite waits on labs, timers and subprocesses, so it runs on more workers than there are
# CPUs (pytest-xdist); tests/conftest.py groups what must share a worker. IKEME_TEST_WORKERS=0: one process.
exec pytest -q -rs --junitxml=test-output/junit.xml -n "${IKEME_TEST_WORKERS:-3}" --dist loadgroup \
  --no-loadscope-reorder "$@"

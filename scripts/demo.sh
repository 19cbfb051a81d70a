#!/usr/bin/env bash
# The main job: the live demo of the system (see README). Needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
exec "$ROOT/.venv/bin/python" -m scenarios.demo "$@"

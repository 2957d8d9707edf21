#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), then runs the default test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the long end-to-end runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Run the demo (the main job) on a fresh machine: creates .venv with the system python3 if
# it is missing, installs cometmp (building the C core), runs `cometmp demo`.
# Extra arguments go to the demo:  bash scripts/demo.sh --seconds 5 --dir /tmp/cm
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q wheel  # so uWSGI (an sdist) builds as a wheel
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/cometmp demo "$@"

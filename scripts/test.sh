#!/usr/bin/env bash
# Run the test suite on a fresh machine: creates .venv with the system python3 if it is
# missing, installs cometmp (building the C core) with its test extras, runs pytest.
# Extra arguments go to pytest:  bash scripts/test.sh tests/unit -k cli
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q wheel  # so uWSGI (an sdist) builds as a wheel
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"

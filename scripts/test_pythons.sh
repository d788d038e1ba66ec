#!/usr/bin/env bash
# Build cometmp under other CPythons and run a test tier under each.
#   bash scripts/test_pythons.sh [PYTHON...] [-- PYTEST_ARGS...]
# PYTHON defaults to every CPython 3.10-3.13 found under ~/.pyenv/versions; PYTEST_ARGS
# default to the unit tier (tests/unit -q). Everything happens outside this checkout,
# under ${COMETMP_VENVS:-/tmp/cometmp-venvs}: a copy of the working tree (src-<version>,
# without .venv, build products or compiled modules) and a venv per interpreter
# (<version>/) with that copy installed editable, so the compiled modules are built for
# that interpreter, and tests that start `python -c ...` from the tree import them.
# uwsgi (an sdist compiled per interpreter) is left out: only the integration tier uses it.
# Exits non-zero if any interpreter failed; one summary line per interpreter is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
pythons=() args=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; args=("$@"); break; fi
    pythons+=("$1"); shift
done
if [ ${#pythons[@]} -eq 0 ]; then
    for v in 3.10 3.11 3.12 3.13; do
        p=$(ls -d "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/"$v".*/bin/python3 2>/dev/null | sort -V | tail -1)
        [ -n "$p" ] && pythons+=("$p")
    done
fi
[ ${#pythons[@]} -eq 0 ] && { echo "test_pythons: no interpreters found" >&2; exit 1; }
[ ${#args[@]} -eq 0 ] && args=(tests/unit -q -rfE)
root="${COMETMP_VENVS:-/tmp/cometmp-venvs}"
mkdir -p "$root"
test_deps=$(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]
print(" ".join(d for d in deps if not re.match(r"uwsgi\b", d, re.I)))
PY
)
summary=() rc=0
for py in "${pythons[@]}"; do
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { rc=1; continue; }
    venv="$root/$ver" src="$root/src-$ver"
    echo "=== CPython $ver ($py): $src, $venv"
    rm -rf "$src" && mkdir -p "$src"
    git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$src"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q $test_deps -e "$src" 2>&1 | grep -v "is ignored"
    if ! (cd / && "$venv/bin/python" -c 'import cometmp._appender, cometmp._reader, cometmp._cffi'); then
        summary+=("CPython $ver: install FAILED"); rc=1; continue
    fi
    out=$(cd "$src" && "$venv/bin/python" -m pytest -p no:cacheprovider "${args[@]}" 2>&1); r=$?
    printf '%s\n' "$out" | tail -60
    summary+=("CPython $ver: $(printf '%s\n' "$out" | tail -1)")
    [ $r -eq 0 ] || rc=1
done
printf '%s\n' "${summary[@]}"
exit $rc

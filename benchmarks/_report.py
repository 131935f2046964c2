"""How every benchmark script hands back its numbers: one JSON document, to ``--out`` or to stdout."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def emit(report: dict, out: Path | None, indent: int = 2) -> None:
    """Write ``report`` as JSON to ``out`` (folders created; a note on stderr), or print it when ``out`` is None."""
    text = json.dumps(report, indent=indent)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)

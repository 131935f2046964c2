"""The kernels' golden references (``kernels/<name>/reference.py``), loaded by path: the kernel folders are not
packages, and each reference is imported once under its own module name."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def load_reference(kernel: str) -> ModuleType:
    """``kernels/<kernel>/reference.py`` as module ``lt_<kernel>_reference`` (cached in ``sys.modules``)."""
    name = f"lt_{kernel}_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KERNELS / kernel / "reference.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]

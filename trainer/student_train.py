"""Compatibility name of the student trainer, which now lives in :mod:`trainer.student` (one job per module).

``python -m trainer.student_train ...`` is ``python -m trainer.student ...`` (= ``python trainer/main.py student``);
``from trainer.student_train import X`` still finds every public name of the package (imported on first use).
"""
from __future__ import annotations

from trainer.student import __all__, __getattr__  # noqa: F401

if __name__ == "__main__":
    from trainer.student.cli import main

    raise SystemExit(main())

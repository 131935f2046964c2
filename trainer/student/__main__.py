"""``python -m trainer.student``: the student trainer's command line (:mod:`trainer.student.cli`)."""
from trainer.student.cli import main

raise SystemExit(main())

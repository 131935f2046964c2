"""Training loops: one skeleton (:func:`run_loop`) and a plug-in per model.

* :mod:`trainer.loops.skeleton` -- epochs of batches, CSV + tqdm, checkpoints every k steps, exact resume;
* :mod:`trainer.loops.ddp` -- DistributedDataParallel, in one place.

The plug-ins live beside their models' training code: ``trainer.segmenter_train.SegmenterPlugin``,
``trainer.inpainter_train.InpainterPlugin``, ``trainer.student.loop.StudentPlugin``.
"""
from trainer.loops.ddp import DistContext, dist_env, state_sha1
from trainer.loops.skeleton import LAST, LoopSettings, Plugin, StepPlugin, run_loop

__all__ = ["DistContext", "LAST", "LoopSettings", "Plugin", "StepPlugin", "dist_env", "run_loop", "state_sha1"]

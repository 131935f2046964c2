"""Student training (``python trainer/main.py student``): distil the dlib teacher into a student that sees masked faces.

One job per module (imported on first use, so ``import trainer.student`` does not import torch):

==============  ====================================================================================
``config``      :class:`StudentConfig`, ``--preset`` table, named choices (no torch)
``data``        :class:`MaskedChipDataset` (masked / completed chips), PK batches, collation
``teacher``     the frozen teacher (dlib port or :class:`OnnxTeacher`), cached clean descriptors
``prepare``     read + align + filter + split + teacher descriptors -> :class:`Prepared`
``models``      the students (:class:`ArcInput`, :func:`new_student`), weight files
``graph``       a student as an in-memory ONNX graph run by ONNX Runtime (also the exporter's core)
``build``       :func:`build_models`: teacher, student, loss, ArcFace head, optimiser
``validate``    held-out clean-vs-masked verification with the teacher baseline (:class:`Validator`)
``loop``        :class:`StudentPlugin` on the loop skeleton, :func:`train`
``cli``         the command line (``add_parser`` for ``trainer/main.py``, ``python -m trainer.student``)
==============  ====================================================================================
"""
from __future__ import annotations

import importlib

_WHERE = {
    "config": ("StudentConfig", "PRESETS", "ARCHS", "PAIRWISE", "TEACHER_CROPS", "TEACHER_INPUTS", "ARC_SIZE",
               "TRAIN_MASK_WEIGHTS"),
    "data": ("MaskedChipDataset", "sample_seed", "pk_batches", "collate", "worker_init", "arc_matrices"),
    "teacher": ("OnnxTeacher", "build_teacher", "teacher_dim", "teacher_crop", "teacher_matrices",
                "teacher_descriptors", "teacher_cache_name"),
    "prepare": ("Prepared", "select_samples", "prepare_data"),
    "models": ("ArcInput", "new_student", "student_arch", "student_cost", "student_crop", "to_input", "save_student",
               "load_student_weights", "student_meta"),
    "graph": ("export_onnx_bytes", "ort_session", "ort_descriptors", "crop_of"),
    "build": ("build_models",),
    "validate": ("val_pairs", "pair_accuracy", "embed_chips", "torch_embed", "Validator"),
    "loop": ("StudentPlugin", "train", "capstone_terms", "set_epoch_lr", "plot_losses", "CSV_FIELDS"),
    "cli": ("add_args", "config_from_args", "add_parser", "run", "main"),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"trainer.student.{mod}"), name)

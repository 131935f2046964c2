"""Evaluation metrics and reports (pure numpy; matplotlib only for :func:`plot_roc`).

See :mod:`trainer.eval.metrics` for the exact definitions (LFW 10-fold accuracy, TAR@FAR, ROC,
rank-k identification, masked PSNR / SSIM) and :mod:`trainer.eval.report` for the outputs.
"""
from .metrics import (
    OperatingPoint,
    VerificationResult,
    auc,
    best_threshold,
    cosine_pair_scores,
    lfw_10fold,
    pair_folds,
    psnr,
    psnr_batch,
    rank1_identification,
    roc_auc,
    roc_curve,
    ssim,
    ssim_batch,
    tar_at_far,
)
from .report import markdown_table, plot_roc, write_report

__all__ = [
    "OperatingPoint",
    "VerificationResult",
    "auc",
    "best_threshold",
    "cosine_pair_scores",
    "lfw_10fold",
    "pair_folds",
    "psnr",
    "psnr_batch",
    "rank1_identification",
    "roc_auc",
    "roc_curve",
    "ssim",
    "ssim_batch",
    "tar_at_far",
    "markdown_table",
    "plot_roc",
    "write_report",
]

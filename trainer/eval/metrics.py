"""Face-recognition and completion metrics, computed the way the papers compute them (pure numpy).

Conventions used throughout
---------------------------
* Scores are *similarities*: higher means "more likely the same person". A pair is **accepted**
  (predicted "same") iff ``score >= threshold``. Distances must be negated before being passed in.
* Scores must be finite; they are cast to float64.
* Rates (accuracy, TAR, FAR, rank-k) are fractions in [0, 1], not percentages. The report layer
  (:mod:`trainer.eval.report`) multiplies by 100 for display.

Contents
--------
* :func:`lfw_10fold` / :func:`pair_folds` -- LFW view-2 10-fold verification accuracy.
* :func:`tar_at_far` -- TAR at fixed FAR operating points (IJB / MFR style).
* :func:`roc_curve` / :func:`auc` / :func:`roc_auc` -- ROC curve and its area.
* :func:`rank1_identification` -- closed-set rank-1 / rank-k identification (AR protocol).
* :func:`psnr` / :func:`ssim` (+ ``*_batch``) -- completion (inpainting) quality, optionally masked.
* :func:`cosine_pair_scores` -- cosine similarity of paired embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "VerificationResult",
    "best_threshold",
    "OperatingPoint",
    "lfw_10fold",
    "pair_folds",
    "tar_at_far",
    "roc_curve",
    "auc",
    "roc_auc",
    "rank1_identification",
    "cosine_pair_scores",
    "psnr",
    "ssim",
    "psnr_batch",
    "ssim_batch",
]


# --------------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------------
def _scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be boolean (or 0/1): True = same identity (genuine pair)")
        y = y.astype(bool)
    y = y.reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same length")
    if s.size == 0:
        raise ValueError("empty score set")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y


# --------------------------------------------------------------------------------------------------
# LFW 10-fold verification
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerificationResult:
    """Outcome of the k-fold verification protocol (LFW view 2).

    Attributes:
        accuracy_mean: mean of the per-fold test accuracies, fraction in [0, 1].
        accuracy_std: *population* standard deviation (``np.std``, ddof=0) of the per-fold
            accuracies, as in the LFW / insightface evaluation code. Fraction in [0, 1].
        fold_accuracies: (K,) test accuracy of each fold, in fold order (sorted fold ids).
        fold_thresholds: (K,) similarity threshold chosen on the other K-1 folds for each fold
            (may be ``-inf`` = accept everything, or ``+inf`` = reject everything).
        fold_ids: (K,) the fold ids, sorted ascending, matching the two arrays above.
    """

    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: np.ndarray = field(repr=False)
    fold_thresholds: np.ndarray = field(repr=False)
    fold_ids: np.ndarray = field(repr=False)

    @property
    def n_folds(self) -> int:
        return int(self.fold_accuracies.size)

    def to_dict(self) -> dict:
        """JSON-friendly dict (lists of floats; infinite thresholds stay as float inf)."""
        return {
            "accuracy_mean": float(self.accuracy_mean),
            "accuracy_std": float(self.accuracy_std),
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "fold_thresholds": [float(t) for t in self.fold_thresholds],
            "fold_ids": [int(f) for f in self.fold_ids],
        }


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy-maximising threshold on one (training) score set.

    Candidates are ``-inf``, the midpoints between consecutive *sorted unique* scores, and
    ``+inf`` (so ``m`` unique scores give ``m + 1`` candidates, one per distinct way of splitting
    the sorted scores). Accept iff ``score >= threshold``. Ties in accuracy are broken towards the
    **smallest** candidate (this is what ``np.argmax`` over ascending thresholds does in the
    insightface ``calculate_roc``), so with indistinguishable scores and at least as many genuine
    as impostor pairs the result is ``-inf`` (accept all).

    Args:
        scores: (N,) finite similarity scores.
        labels: (N,) bool, True = genuine (same identity).

    Returns:
        ``(threshold, accuracy)`` with accuracy a fraction in [0, 1] on the given set.
    """
    s, y = _scores_labels(scores, labels)
    uniq, inv = np.unique(s, return_inverse=True)
    m = uniq.size
    gen = np.bincount(inv, weights=y, minlength=m)           # genuine count per unique score
    imp = np.bincount(inv, weights=~y, minlength=m)          # impostor count per unique score
    # candidate j (0..m) accepts the unique values with index >= j
    gen_accepted = np.concatenate([np.cumsum(gen[::-1])[::-1], [0.0]])    # (m+1,)
    imp_rejected = np.concatenate([[0.0], np.cumsum(imp)])                 # (m+1,)
    correct = gen_accepted + imp_rejected
    j = int(np.argmax(correct))                                            # first max = smallest
    if j == 0:
        thr = -np.inf
    elif j == m:
        thr = np.inf
    else:
        thr = float((uniq[j - 1] + uniq[j]) / 2.0)
    return thr, float(correct[j] / s.size)


def lfw_10fold(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> VerificationResult:
    """LFW view-2 verification accuracy ("unrestricted, labeled outside data" protocol).

    For every fold f: the threshold is chosen by :func:`best_threshold` on all pairs *not* in f
    (maximum accuracy, smallest threshold on ties, candidates = midpoints between sorted unique
    training scores plus +-inf), then the accuracy of ``score >= threshold`` vs. the labels is
    measured on fold f. The result is the mean and the population std (``np.std``, ddof=0, as
    the LFW / insightface code reports it) of the per-fold accuracies.

    Works for any number K >= 2 of folds (LFW: 10 folds of 300 genuine + 300 impostor pairs,
    see :func:`pair_folds`).

    Args:
        scores: (P,) similarity per pair, higher = same person.
        labels: (P,) bool, True = same identity.
        folds: (P,) int fold id of each pair (LFW: 0..9).

    Returns:
        :class:`VerificationResult` (accuracies are fractions in [0, 1]).
    """
    s, y = _scores_labels(scores, labels)
    f = np.asarray(folds).reshape(-1)
    if f.shape != s.shape:
        raise ValueError(f"folds {f.shape} must match scores {s.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        if not np.all(f == np.round(f)):
            raise ValueError("fold ids must be integers")
        f = f.astype(np.int64)
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError("need at least 2 folds")
    accs = np.empty(ids.size)
    thrs = np.empty(ids.size)
    for i, fid in enumerate(ids):
        test = f == fid
        thr, _ = best_threshold(s[~test], y[~test])
        thrs[i] = thr
        accs[i] = np.mean((s[test] >= thr) == y[test])
    return VerificationResult(
        accuracy_mean=float(accs.mean()),
        accuracy_std=float(accs.std()),
        fold_accuracies=accs,
        fold_thresholds=thrs,
        fold_ids=ids,
    )


def pair_folds(n_pairs: int = 6000, folds: int = 10) -> np.ndarray:
    """Fold id of each pair, in pairs.txt order: ``n_pairs / folds`` consecutive pairs per fold.

    LFW's pairs.txt lists 10 sets of 300 genuine then 300 impostor pairs, so the default gives
    pairs 0..599 -> fold 0, 600..1199 -> fold 1, ..., 5400..5999 -> fold 9.

    Returns:
        (n_pairs,) int64 array of fold ids in 0..folds-1.
    """
    if folds < 1 or n_pairs < folds or n_pairs % folds:
        raise ValueError(f"n_pairs={n_pairs} must be a positive multiple of folds={folds}")
    return np.arange(n_pairs, dtype=np.int64) // (n_pairs // folds)


# --------------------------------------------------------------------------------------------------
# TAR @ FAR, ROC
# --------------------------------------------------------------------------------------------------
class OperatingPoint(NamedTuple):
    """One TAR@FAR operating point: ``(tar, threshold, achieved_far)``, rates in [0, 1]."""

    tar: float
    threshold: float
    achieved_far: float


def _max_false_accepts(target: float, n_imp: int) -> int:
    """Largest integer k with ``k / n_imp <= target`` (the float comparison, done exactly)."""
    k = int(np.floor(target * n_imp))
    while k + 1 <= n_imp and (k + 1) / n_imp <= target:
        k += 1
    while k > 0 and k / n_imp > target:
        k -= 1
    return max(0, min(k, n_imp))


def tar_at_far(
    scores: np.ndarray, labels: np.ndarray, far_targets: Sequence[float] = (1e-2, 1e-3)
) -> dict[float, OperatingPoint]:
    """True-accept rate at fixed false-accept rates.

    Definitions (accept iff ``score >= thr``)::

        FAR(thr) = #{impostor scores >= thr} / #impostors
        TAR(thr) = #{genuine  scores >= thr} / #genuines

    For each target the threshold is the **smallest float64 thr with FAR(thr) <= target**. With
    ``N`` impostors this allows at most ``k = floor(target * N)`` false accepts (k is the largest
    integer with ``k / N <= target``; e.g. 3000 impostors at FAR 1e-3 -> k = 3). If ``s_(k+1)`` is
    the (k+1)-th highest impostor score, the threshold is ``np.nextafter(s_(k+1), +inf)``: every
    impostor (and genuine) score tied with ``s_(k+1)`` is rejected, so with ties the achieved FAR
    can be below k / N. If ``k >= N`` the threshold is ``-inf`` (accept everything). No
    interpolation between ROC points is done.

    Args:
        scores: (P,) similarity per pair.
        labels: (P,) bool, True = genuine; needs at least one pair of each kind.
        far_targets: FAR values in [0, 1].

    Returns:
        ``{target: OperatingPoint(tar, threshold, achieved_far)}`` keyed by the given targets.
    """
    s, y = _scores_labels(scores, labels)
    gen = np.sort(s[y])
    imp = np.sort(s[~y])[::-1]                                  # descending
    if gen.size == 0 or imp.size == 0:
        raise ValueError("need at least one genuine and one impostor pair")
    out: dict[float, OperatingPoint] = {}
    for target in far_targets:
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"FAR target {target} outside [0, 1]")
        k = _max_false_accepts(float(target), imp.size)
        thr = -np.inf if k >= imp.size else float(np.nextafter(imp[k], np.inf))
        far = np.count_nonzero(imp >= thr) / imp.size
        tar = (gen.size - np.searchsorted(gen, thr, side="left")) / gen.size
        out[target] = OperatingPoint(float(tar), thr, float(far))
    return out


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC (no point dropping): one point per distinct score, plus the origin.

    ``thresholds = [+inf, s_1, s_2, ...]`` with ``s_i`` the unique scores in descending order;
    ``far[i] = FAR(thresholds[i])``, ``tar[i] = TAR(thresholds[i])`` (accept iff
    ``score >= thr``). So ``far``/``tar`` are non-decreasing, start at (0, 0) and end at (1, 1).

    Returns:
        ``(far, tar, thresholds)``, each (U + 1,) float64 for U unique scores.
    """
    s, y = _scores_labels(scores, labels)
    n_gen, n_imp = int(y.sum()), int((~y).sum())
    if n_gen == 0 or n_imp == 0:
        raise ValueError("need at least one genuine and one impostor pair")
    uniq, inv = np.unique(s, return_inverse=True)
    gen = np.bincount(inv, weights=y, minlength=uniq.size)[::-1]
    imp = np.bincount(inv, weights=~y, minlength=uniq.size)[::-1]
    tar = np.concatenate([[0.0], np.cumsum(gen) / n_gen])
    far = np.concatenate([[0.0], np.cumsum(imp) / n_imp])
    thresholds = np.concatenate([[np.inf], uniq[::-1]])
    return far, tar, thresholds


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule (x must be monotonic, e.g. ROC far -> tar)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = np.diff(x)
    if np.all(d >= 0):
        sign = 1.0
    elif np.all(d <= 0):
        sign = -1.0
    else:
        raise ValueError("x must be monotonic")
    return float(sign * np.sum(d * (y[1:] + y[:-1]) / 2.0))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under :func:`roc_curve` = P(genuine > impostor) + 0.5 * P(tie)."""
    far, tar, _ = roc_curve(scores, labels)
    return auc(far, tar)


# --------------------------------------------------------------------------------------------------
# identification
# --------------------------------------------------------------------------------------------------
def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def cosine_pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b``: (P, D), (P, D) -> (P,)."""
    a, b = _l2n(a), _l2n(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return np.einsum("ij,ij->i", a, b)


def rank1_identification(
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    probe_emb: np.ndarray,
    probe_labels: np.ndarray,
    ks: Sequence[int] | None = None,
) -> float | dict[int, float]:
    """Closed-set identification rate (AR protocol: one enrolled image per identity, masked probes).

    Rows are L2-normalised and compared by cosine similarity. An identity's score is the maximum
    over its gallery images (with one image per identity this is just that image). A probe is
    correct at rank k if fewer than k *other* identities score ``>=`` its true identity -- ties are
    counted against the probe (pessimistic, deterministic).

    Args:
        gallery_emb: (G, D) gallery embeddings.
        gallery_labels: (G,) identity of each gallery row (any hashable numpy dtype).
        probe_emb: (Q, D) probe embeddings.
        probe_labels: (Q,) identity of each probe; every one must be enrolled (closed set).
        ks: optional ranks to report.

    Returns:
        rank-1 rate (fraction in [0, 1]) if ``ks`` is None, else ``{k: rate}`` for every k in
        ``ks`` plus k = 1.
    """
    g, p = _l2n(gallery_emb), _l2n(probe_emb)
    gl, pl = np.asarray(gallery_labels).reshape(-1), np.asarray(probe_labels).reshape(-1)
    if g.shape[0] != gl.size or p.shape[0] != pl.size:
        raise ValueError("embeddings and labels must have the same number of rows")
    if g.shape[1] != p.shape[1]:
        raise ValueError(f"embedding dims differ: {g.shape[1]} vs {p.shape[1]}")
    if pl.size == 0:
        raise ValueError("no probes")
    ids, g_idx = np.unique(gl, return_inverse=True)
    pos = np.searchsorted(ids, pl)
    pos_c = np.minimum(pos, ids.size - 1)
    if not np.all(ids[pos_c] == pl):
        missing = np.unique(pl[ids[pos_c] != pl])[:5]
        raise ValueError(f"probe identities not in the gallery (closed set): {missing.tolist()}")
    order = np.argsort(g_idx, kind="stable")                          # gallery rows grouped by id
    starts = np.searchsorted(g_idx[order], np.arange(ids.size))
    g_sorted = g[order]
    ranks = np.empty(pl.size, dtype=np.int64)
    chunk = 4096
    for a in range(0, pl.size, chunk):
        sim = p[a:a + chunk] @ g_sorted.T                            # (q, G) cosine similarities
        per_id = np.maximum.reduceat(sim, starts, axis=1)            # (q, I) max over id's images
        true = per_id[np.arange(sim.shape[0]), pos_c[a:a + chunk]]
        ranks[a:a + chunk] = (per_id >= true[:, None]).sum(axis=1)  # includes itself -> rank >= 1
    if ks is None:
        return float(np.mean(ranks <= 1))
    kk = sorted({1, *(int(k) for k in ks)})
    if kk[0] < 1:
        raise ValueError("ranks must be >= 1")
    return {k: float(np.mean(ranks <= k)) for k in kk}


# --------------------------------------------------------------------------------------------------
# completion quality
# --------------------------------------------------------------------------------------------------
def _pair_images(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be HxW or HxWxC, got {a.shape}")
    return a, b


def _pixel_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Bool mask broadcast to the image shape (an HxW mask covers all channels)."""
    if mask is None:
        return None
    m = np.asarray(mask).astype(bool)
    if m.shape == shape[:2] and len(shape) == 3:
        m = np.broadcast_to(m[:, :, None], shape)
    if m.shape != shape:
        raise ValueError(f"mask {np.asarray(mask).shape} does not fit image {shape}")
    if not m.any():
        raise ValueError("mask selects no pixels")
    return m


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 255) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        a, b: HxW or HxWxC images (uint8 by default; any dtype, computed in float64).
        mask: optional HxW (or HxWxC) bool, non-zero = pixel counted. With a mask the MSE is
            taken over the masked pixels (all channels) only, e.g. the completed mask region.
        data_range: peak value (255 for uint8, 1.0 for [0, 1] floats).

    Returns:
        PSNR in dB; ``inf`` for identical (masked) pixels.
    """
    a, b = _pair_images(a, b)
    m = _pixel_mask(mask, a.shape)
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(d[m] ** 2)) if m is not None else float(np.mean(d ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(data_range) ** 2 / mse))


def ssim(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 255, **kwargs
) -> float:
    """Structural similarity (skimage defaults: 7x7 uniform window, K1=0.01, K2=0.03).

    * ``mask is None``: returns ``skimage.metrics.structural_similarity``'s mean SSIM as is (it
      excludes a (win_size-1)/2 = 3 px border), i.e. the number inpainting papers report.
    * with a mask: the *full* SSIM map (``full=True``; ``channel_axis=-1`` for colour, giving one
      map per channel) is averaged over the masked pixels (all channels), border included -- so an
      all-True mask can differ slightly from ``mask=None``. Each map value still depends on the
      7x7 neighbourhood, which may reach outside the mask.

    Args:
        a, b: HxW or HxWxC images (at least 7x7), uint8 by default.
        mask: optional HxW (or HxWxC) bool.
        data_range: 255 for uint8, 1.0 for [0, 1] floats.
        **kwargs: passed to ``structural_similarity`` (e.g. ``gaussian_weights=True``).

    Returns:
        SSIM in [-1, 1] (1 = identical).
    """
    from skimage.metrics import structural_similarity

    a, b = _pair_images(a, b)
    m = _pixel_mask(mask, a.shape)
    channel_axis = -1 if a.ndim == 3 else None
    mssim, smap = structural_similarity(
        a, b, data_range=data_range, channel_axis=channel_axis, full=True, **kwargs
    )
    if m is None:
        return float(mssim)
    return float(np.mean(smap[m]))


def psnr_batch(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    data_range: float = 255,
) -> np.ndarray:
    """Per-image :func:`psnr` over lists: returns (N,) dB. Papers report the mean of these."""
    if len(a) != len(b) or (masks is not None and len(masks) != len(a)):
        raise ValueError("lists must have the same length")
    ms = masks if masks is not None else [None] * len(a)
    return np.array([psnr(x, y, m, data_range) for x, y, m in zip(a, b, ms)], dtype=np.float64)


def ssim_batch(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    data_range: float = 255,
    **kwargs,
) -> np.ndarray:
    """Per-image :func:`ssim` over lists: returns (N,)."""
    if len(a) != len(b) or (masks is not None and len(masks) != len(a)):
        raise ValueError("lists must have the same length")
    ms = masks if masks is not None else [None] * len(a)
    return np.array([ssim(x, y, m, data_range, **kwargs) for x, y, m in zip(a, b, ms)], dtype=np.float64)

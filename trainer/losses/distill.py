"""Relational de-occlusion distillation losses (Li, Ge, Zhang, Li, "Look Through Masks", ACM MM 2020).

The student sees completed (de-occluded) faces ``x~_i``, the frozen teacher sees the matching clean faces
``y_i``; ``s_i`` / ``t_i`` are their features (rows of ``s`` (B, Ds) and ``t`` (B, Dt)).  Total loss, eq. 16::

    L = L_CE + lambda_i * L_i + lambda_p * L_p + lambda_t * L_t        paper: lambda_p = 1, lambda_t = 2

Terms (the paper writes each as a *sum* over all tuples of the mini-batch; every function here returns the
*mean* over those tuples instead, as RKD (Park et al. 2019) does, so the weights do not have to be retuned
when the batch size changes -- the paper's sum is ``mean * number_of_tuples``):

* instance, hard (eq. 12)   ``l1(t_i, s_i)``                                     :func:`instance_hard`
* instance, soft (eq. 17-18) ``l1(t_i - f_id(t), s_i - f_id(s))``               :func:`instance_soft`
* pair (eq. 13)             ``huber(|t_i - t_j| / mu_t, |s_i - s_j| / mu_s)``   :func:`pair_loss`
* triplet (eq. 14-15)       ``huber(cos angle_j(t_i, t_k), cos angle_j(s_i, s_k))`` :func:`triplet_loss`

Numerical safety: every Euclidean norm is ``sqrt(clamp(sum x^2, min=eps))`` so two coincident embeddings
(distance 0, where ``d/dx sqrt`` is infinite) give finite -- zero -- gradients; self-pairs (i == j) and
degenerate triplets are masked out, never differentiated through.

Differing dimensions (teacher 128-d dlib, student 512-d): the pair and triplet potentials are
dimension-free (normalised distances, cosines), so they compare ``s`` and ``t`` directly.  The instance
terms compare coordinates, so :class:`RelationalDistillLoss` maps the student into the teacher space with a
learned bias-free linear projection ``P: R^Ds -> R^Dt`` (``projection="linear"``, created automatically when
the dimensions differ) and applies eq. 12 / 17 to ``P s_i``.  ``P`` is a parameter of the loss module: hand
``loss.parameters()`` to the optimiser together with the student's.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "safe_norm",
    "safe_normalize",
    "pairwise_distances",
    "instance_hard",
    "instance_soft",
    "pair_loss",
    "triplet_loss",
    "triplet_cosines",
    "identity_centres",
    "batch_centres",
    "CentreBank",
    "RelationalDistillLoss",
    "LAMBDA_P",
    "LAMBDA_T",
]

LAMBDA_P = 1.0  # paper sec. 3.4
LAMBDA_T = 2.0  # paper sec. 3.4
EPS = 1e-12     # clamp on *squared* norms: sqrt(EPS) = 1e-6 is the smallest norm that is differentiated


# ----------------------------------------------------------------------------------------------- helpers
def safe_norm(x: torch.Tensor, dim: int = -1, eps: float = EPS, keepdim: bool = False) -> torch.Tensor:
    """``sqrt(clamp(sum(x^2), min=eps))``: the L2 norm with a finite (zero) gradient at ``x = 0``."""
    return x.pow(2).sum(dim=dim, keepdim=keepdim).clamp(min=eps).sqrt()


def safe_normalize(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """``x / safe_norm(x)``; the zero vector maps to the zero vector with a finite gradient."""
    return x / safe_norm(x, dim=dim, eps=eps, keepdim=True)


def pairwise_distances(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances from explicit differences (exact 0 for coincident rows, no
    ``|a|^2 + |b|^2 - 2ab`` cancellation), through :func:`safe_norm`; the diagonal is ``sqrt(eps)``."""
    return safe_norm(x.unsqueeze(0) - x.unsqueeze(1), dim=-1, eps=eps)


def _check_pair(s: torch.Tensor, t: torch.Tensor) -> None:
    if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"expected s (B, Ds) and t (B, Dt) with the same B, got {tuple(s.shape)}, {tuple(t.shape)}")


def _reduce_l1(diff: torch.Tensor, reduction: str) -> torch.Tensor:
    """``diff`` (B, D) -> L1 with the instance-term reduction (see :func:`instance_hard`)."""
    per_row = diff.abs().sum(dim=1)
    if reduction == "batchmean":
        return per_row.mean()
    if reduction == "mean":
        return diff.abs().mean()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"unknown reduction {reduction!r} (batchmean | mean | sum | none)")


# ------------------------------------------------------------------------------------------ instance
def instance_hard(s: torch.Tensor, t: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """Hard instance-wise loss, eq. 12: ``L_i = sum_i l1(t_i, s_i)``.

    ``s`` and ``t`` must have the same width (project the student first when they differ, see
    :class:`RelationalDistillLoss`).  Reduction: ``l1(t_i, s_i) = ||t_i - s_i||_1`` (sum over the feature
    dimension) and the paper's sum over instances becomes the mean over the batch
    (``reduction="batchmean"``, default).  ``"mean"`` is the elementwise mean (``F.l1_loss``, i.e.
    batchmean / D), ``"sum"`` the paper's literal sum, ``"none"`` the per-row values (B,).
    """
    _check_pair(s, t)
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"instance loss needs equal widths, got student {s.shape[1]} vs teacher {t.shape[1]};"
                         " project the student (RelationalDistillLoss(projection='linear'))")
    return _reduce_l1(t - s, reduction)


def identity_centres(features: torch.Tensor, ids: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Eq. 18: ``f_id = sum_i [y_i = id] t_i / sum_i [y_i = id]`` -- per-identity mean of (teacher) features.

    The paper pre-computes these *offline* over the whole training set (N images) with the frozen teacher
    on the clean faces.  ``features`` (N, D), ``ids`` (N,) int64 in [0, n_classes).  Identities with no sample
    get a zero centre.  For data sets that do not fit in memory accumulate with :class:`CentreBank`
    (``momentum=None``: exact running mean).
    """
    ids = ids.long()
    sums = features.new_zeros(n_classes, features.shape[1]).index_add_(0, ids, features)
    counts = features.new_zeros(n_classes).index_add_(0, ids, torch.ones_like(ids, dtype=features.dtype))
    return sums / counts.clamp(min=1).unsqueeze(1)


def batch_centres(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-row in-batch identity mean: row i gets ``mean{x_j : ids_j == ids_i}`` (B, D), differentiable.

    A singleton identity is its own centre (``x_i - centre = 0``)."""
    same = (ids.view(-1, 1) == ids.view(1, -1)).to(x.dtype)  # (B, B), diagonal is 1
    return (same @ x) / same.sum(dim=1, keepdim=True)


def instance_soft(
    s: torch.Tensor,
    t: torch.Tensor,
    s_centres: Optional[torch.Tensor],
    t_centres: torch.Tensor,
    ids: torch.Tensor,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Soft (identity-centred) instance loss, eq. 17: ``L*_i = sum_i l1(t_i - f_id(t), s_i - f_id(s))``.

    Eq. 17 as printed subtracts the *same* centre ``f_id`` from ``t_i`` and ``s_i``, which cancels
    (``|(t - f) - (s - f)| = |t - s|``, i.e. eq. 12 again).  We read it as each network being centred on
    its own identity centroid, so the student has to reproduce the teacher's *offset from the identity
    centre* rather than its absolute position:

    * ``t_centres`` (C, Dt): eq. 18, per-identity mean of the teacher features over the training set,
      pre-computed offline (:func:`identity_centres`);
    * ``s_centres`` (C, Dt): per-identity centres of the (projected) student features.  The paper gives no
      formula; :class:`RelationalDistillLoss` keeps them as an exponential moving average of the detached
      per-identity batch means (:class:`CentreBank`, momentum 0.9).  Pass ``None`` to use the
      differentiable in-batch identity means (:func:`batch_centres`) instead.

    ``ids`` (B,) int64 identity labels.  Reduction as :func:`instance_hard` (``||.||_1`` per row, mean over
    the batch).
    """
    _check_pair(s, t)
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"instance loss needs equal widths, got student {s.shape[1]} vs teacher {t.shape[1]}")
    ids = ids.long()
    fs = batch_centres(s, ids) if s_centres is None else s_centres.index_select(0, ids).to(s.dtype)
    ft = t_centres.index_select(0, ids).to(t.dtype)
    return _reduce_l1((t - ft) - (s - fs), reduction)


class CentreBank(nn.Module):
    """Per-identity feature centres kept as a buffer ``centres`` (C, D).

    ``momentum=m`` (0 < m < 1): ``c_id <- m c_id + (1 - m) mean(batch rows of id)`` -- the EMA used for the
    student centres of the soft instance loss; the first batch that contains an identity initialises it.
    ``momentum=None``: exact running mean over everything seen (streaming version of eq. 18, for the
    offline teacher centres).  Updates are done under ``no_grad`` on detached features.
    """

    def __init__(self, n_classes: int, dim: int, momentum: Optional[float] = 0.9):
        super().__init__()
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1) or None")
        self.momentum = momentum
        self.register_buffer("centres", torch.zeros(n_classes, dim))
        self.register_buffer("counts", torch.zeros(n_classes))

    @torch.no_grad()
    def update(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        x = x.detach().to(self.centres.dtype)
        ids = ids.long()
        sums = torch.zeros_like(self.centres).index_add_(0, ids, x)
        n = torch.zeros_like(self.counts).index_add_(0, ids, torch.ones_like(ids, dtype=self.counts.dtype))
        seen = n > 0
        mean = sums[seen] / n[seen].unsqueeze(1)
        if self.momentum is None:
            tot = self.counts[seen] + n[seen]
            self.centres[seen] += (mean - self.centres[seen]) * (n[seen] / tot).unsqueeze(1)
        else:
            fresh = (self.counts[seen] == 0).unsqueeze(1)
            blended = self.momentum * self.centres[seen] + (1.0 - self.momentum) * mean
            self.centres[seen] = torch.where(fresh, mean, blended)
        self.counts[seen] += n[seen]


# ---------------------------------------------------------------------------------------------- pair
def _huber(a: torch.Tensor, b: torch.Tensor, delta: float) -> torch.Tensor:
    return F.huber_loss(a, b, reduction="none", delta=delta)


def pair_loss(s: torch.Tensor, t: torch.Tensor, delta: float = 1.0, eps: float = EPS) -> torch.Tensor:
    """Pair-wise relational loss, eq. 13 (RKD distance loss).

    ``psi_p(x_i, x_j) = ||x_i - x_j||_2 / mu_x`` with ``mu_x`` the mean distance of the batch.  The paper's
    ``mu = 1/|Y^2| sum_{Y^2} ||t_i - t_j||`` leaves open whether self-pairs count; as in RKD we average
    over the positive (off-diagonal, i != j) distances, computed separately for teacher and student, so
    the two spaces may have different dimensions and scales (the loss is invariant to a uniform scaling of
    either).  Loss: Huber (``delta=1``, equal to ``smooth_l1`` as used by RKD) between the two normalised
    distance matrices, averaged over all ordered pairs i != j (``B(B-1)`` terms; the matrix is symmetric
    so this equals the mean over unordered pairs).  Batches with fewer than two rows give 0.
    """
    _check_pair(s, t)
    b = s.shape[0]
    if b < 2:
        return s.sum() * 0.0 + t.sum() * 0.0
    off = ~torch.eye(b, dtype=torch.bool, device=s.device)
    ds = pairwise_distances(s, eps)[off]
    dt = pairwise_distances(t, eps)[off]
    return _huber(ds / ds.mean(), dt / dt.mean(), delta).mean()


# ------------------------------------------------------------------------------------------- triplet
def triplet_cosines(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(B, D) -> (B, B, B) with ``[j, i, k] = <(x_i - x_j)/|x_i - x_j|, (x_k - x_j)/|x_k - x_j|>``, the
    cosine of the angle at the middle instance ``x_j`` (eq. 15).  Degenerate entries (i == j or k == j)
    are 0 because the zero difference normalises to the zero vector."""
    e = safe_normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=-1, eps=eps)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))


def triplet_loss(s: torch.Tensor, t: torch.Tensor, delta: float = 1.0, eps: float = EPS) -> torch.Tensor:
    """Triplet-wise relational loss, eq. 14-15 (RKD angle loss).

    ``psi_t(x_i, x_j, x_k) = cos angle(x_i - x_j, x_k - x_j)``; Huber (``delta=1``) between teacher and
    student cosines, averaged over all ordered triplets of *distinct* indices i, j, k of the batch
    (``B(B-1)(B-2)`` terms; the angle is undefined when i == j or k == j, and i == k gives cos = 1 on both
    sides).  RKD's reference code averages over all ``B^3`` entries, degenerate ones contributing 0, so its
    value is ``ours * (B-1)(B-2)/B^2``.  Memory: O(B^2 (Ds + Dt) + B^3).  Batches with fewer than three
    rows give 0.
    """
    _check_pair(s, t)
    b = s.shape[0]
    if b < 3:
        return s.sum() * 0.0 + t.sum() * 0.0
    eye = torch.eye(b, dtype=torch.bool, device=s.device)
    distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))  # j!=i, j!=k, i!=k
    cs = triplet_cosines(s, eps)[distinct]
    ct = triplet_cosines(t, eps)[distinct]
    return _huber(cs, ct, delta).mean()


# --------------------------------------------------------------------------------------------- total
class RelationalDistillLoss(nn.Module):
    """Eq. 16: ``L = w_ce L_CE + lambda_i L_i + lambda_p L_p + lambda_t L_t``.

    Args:
        student_dim, teacher_dim: feature widths (needed for the instance projection).
        instance: ``"soft"`` (eq. 17, the paper's best, OUR-Soft), ``"hard"`` (eq. 12, OUR-Hard) or
            ``"none"``.
        lambda_i: instance weight -- not given in the paper; 1.0 by default.
        lambda_p, lambda_t: paper defaults 1.0 and 2.0.
        ce_weight: weight of the cross-entropy term (1.0).
        projection: ``"auto"`` (linear iff the widths differ and an instance term is used), ``"linear"``
            (always a learned bias-free ``Linear(student_dim, teacher_dim)``) or ``"identity"``.  Only the
            instance term sees the projection.
        n_classes, teacher_centres: for ``instance="soft"``: the offline teacher identity centres (C, Dt),
            eq. 18 (:func:`identity_centres`).  Required for ``"soft"``.
        student_centres: ``"ema"`` (:class:`CentreBank` with ``centre_momentum``, updated in training mode
            after the loss is computed) or ``"batch"`` (in-batch identity means, :func:`batch_centres`).
        delta: Huber threshold of the pair / triplet terms.

    ``forward(s, t, logits=None, labels=None, teacher_logits=None, temperature=1.0)`` returns
    ``(total, parts)`` with ``parts`` a dict of detached scalars (``ce``, ``instance``, ``pair``,
    ``triplet``, ``total``).  ``t`` is detached (the teacher is frozen).  CE: the paper's eq. 16 uses the
    cross-entropy between teacher and student outputs (eq. 10); when ``teacher_logits`` are given that is
    ``-T^2 sum softmax(t/T) log softmax(z/T)``, otherwise (e.g. a dlib teacher with no classifier) it is
    the label cross-entropy of the student's classification head ``CE(logits, labels)`` (pass ArcFace
    logits from :class:`trainer.losses.margin.ArcFaceHead` for an ArcFace loss).  With ``logits=None`` the
    CE term is 0.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        instance: str = "soft",
        lambda_i: float = 1.0,
        lambda_p: float = LAMBDA_P,
        lambda_t: float = LAMBDA_T,
        ce_weight: float = 1.0,
        projection: str = "auto",
        n_classes: Optional[int] = None,
        teacher_centres: Optional[torch.Tensor] = None,
        student_centres: str = "ema",
        centre_momentum: float = 0.9,
        delta: float = 1.0,
        instance_reduction: str = "batchmean",
    ):
        super().__init__()
        if instance not in ("soft", "hard", "none"):
            raise ValueError(f"instance must be soft | hard | none, got {instance!r}")
        if student_centres not in ("ema", "batch"):
            raise ValueError(f"student_centres must be ema | batch, got {student_centres!r}")
        self.instance = instance
        self.lambda_i, self.lambda_p, self.lambda_t, self.ce_weight = lambda_i, lambda_p, lambda_t, ce_weight
        self.delta = delta
        self.instance_reduction = instance_reduction
        self.student_centres = student_centres

        if projection == "auto":
            projection = "linear" if (instance != "none" and student_dim != teacher_dim) else "identity"
        if projection == "linear":
            self.projection: nn.Module = nn.Linear(student_dim, teacher_dim, bias=False)
        elif projection == "identity":
            if instance != "none" and student_dim != teacher_dim:
                raise ValueError(f"projection='identity' needs student_dim == teacher_dim for the instance "
                                 f"term, got {student_dim} vs {teacher_dim}")
            self.projection = nn.Identity()
        else:
            raise ValueError(f"projection must be auto | linear | identity, got {projection!r}")

        self.bank: Optional[CentreBank] = None
        if instance == "soft":
            if teacher_centres is None:
                raise ValueError("instance='soft' needs teacher_centres (C, teacher_dim): the offline per-identity"
                                 " teacher means of eq. 18 (identity_centres); or use instance='hard'/'none'")
            if teacher_centres.dim() != 2 or teacher_centres.shape[1] != teacher_dim:
                raise ValueError(f"teacher_centres must be (C, {teacher_dim}), got {tuple(teacher_centres.shape)}")
            if n_classes is not None and teacher_centres.shape[0] != n_classes:
                raise ValueError(f"teacher_centres has {teacher_centres.shape[0]} rows, n_classes={n_classes}")
            self.register_buffer("teacher_centres", teacher_centres.detach().clone().float())
            if student_centres == "ema":
                self.bank = CentreBank(teacher_centres.shape[0], teacher_dim, centre_momentum)

    def instance_term(self, s: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        sp = self.projection(s)
        if self.instance == "hard":
            return instance_hard(sp, t, self.instance_reduction)
        if labels is None:
            raise ValueError("instance='soft' needs the identity labels")
        if self.bank is not None:
            # identities never seen yet fall back to the in-batch mean for this step
            seen = (self.bank.counts.index_select(0, labels.long()) > 0).unsqueeze(1)
            fs = torch.where(seen, self.bank.centres.index_select(0, labels.long()).to(sp.dtype),
                             batch_centres(sp, labels))
            loss = _reduce_l1((t - self.teacher_centres.index_select(0, labels.long()).to(t.dtype)) - (sp - fs),
                              self.instance_reduction)
            if self.training:
                self.bank.update(sp, labels)
            return loss
        return instance_soft(sp, t, None, self.teacher_centres, labels, self.instance_reduction)

    def forward(
        self,
        s: torch.Tensor,
        t: torch.Tensor,
        logits: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        teacher_logits: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
    ):
        _check_pair(s, t)
        t = t.detach()
        zero = s.sum() * 0.0
        if logits is None:
            ce = zero
        elif teacher_logits is not None:
            tt = temperature
            ce = -(F.softmax(teacher_logits.detach() / tt, dim=1) * F.log_softmax(logits / tt, dim=1)).sum(1).mean()
            ce = ce * tt * tt
        else:
            if labels is None:
                raise ValueError("CE needs labels (or teacher_logits)")
            ce = F.cross_entropy(logits, labels)
        li = zero if (self.instance == "none" or self.lambda_i == 0) else self.instance_term(s, t, labels)
        lp = zero if self.lambda_p == 0 else pair_loss(s, t, self.delta)
        lt = zero if self.lambda_t == 0 else triplet_loss(s, t, self.delta)
        total = self.ce_weight * ce + self.lambda_i * li + self.lambda_p * lp + self.lambda_t * lt
        parts = {"ce": ce.detach(), "instance": li.detach(), "pair": lp.detach(), "triplet": lt.detach(),
                 "total": total.detach()}
        return total, parts

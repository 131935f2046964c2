"""Inpainting losses: DeepFill's spatially discounted L1, WGAN-GP, and ID-GAN's identity-diversity loss.

* :func:`spatial_discount` -- weight ``gamma ** d`` per pixel, ``d`` = Euclidean distance (px) from a hole
  pixel to the nearest known pixel (``scipy.ndimage.distance_transform_edt`` on CPU numpy, per sample);
  known pixels get ``d = 0`` (weight 1).  A sample with no known pixel at all gets weight 1 everywhere.
* :func:`discounted_l1` -- ``sum(|pred - target| * W * M) / max(C * sum(M), 1)`` (mean discounted error
  per hole pixel and channel); :func:`known_l1` the plain mean over known pixels.
* WGAN-GP (Gulrajani et al. 2017): :func:`gradient_penalty` ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` on random
  interpolates ``x_hat = e * real + (1 - e) * fake``, :func:`d_wgan_loss` ``E[D(fake)] - E[D(real)]``,
  :func:`g_wgan_loss` ``-E[D(fake)]``.
* :class:`IdentityDiversityLoss` -- ID-GAN eq. 6 (Ge et al., "Occluded Face Recognition in the Wild by
  Identity-Diversity Inpainting", TCSVT)::

      L_R = sum_{j in {l, h}} alpha_j |R^j(X) - R^j(Y)|  +  beta [ |R^h(X) - f_id| - |R^h(Y) - f_id|, 0 ]_+

  X the inpainted face, Y the ground truth, R^l a low-level and R^h the identity-layer features of a frozen
  recogniser, f_id (eq. 5) the mean of R^h(Y_i) over the clean training faces of identity id;
  alpha_l = 0.5, alpha_h = 0.05, beta = 0.5 (the paper's constants).  ``|.|`` is taken as the Euclidean
  norm of the flattened feature difference, per sample; the loss is the batch mean.
  :class:`DlibIdentityFeatures` provides R for the repository's teacher: the differentiable dlib ResNet
  port on its 150x150 chip.  The 112x112 ArcFace crop the inpainter works on and the dlib chip are
  different geometries, so the completed crop is warped into the chip with one *fixed* affine -- the
  least-squares similarity from the ``sdk.align.ARCFACE_112`` template points to the ``DLIB_150`` points
  -- via ``F.affine_grid`` / ``F.grid_sample`` (bilinear, differentiable); R^l is the output of dlib's
  first residual level (32 x 35 x 35), R^h the raw 128-d descriptor.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["spatial_discount", "discounted_l1", "known_l1", "gradient_penalty", "d_wgan_loss", "g_wgan_loss",
           "IdentityDiversityLoss", "DlibIdentityFeatures", "arc_to_chip_theta", "identity_centres"]


# ------------------------------------------------------------------------------------------------ L1
def spatial_discount(mask: torch.Tensor, gamma: float = 0.99) -> torch.Tensor:
    """(B, 1, H, W) hole mask (nonzero = hole) -> (B, 1, H, W) float weights ``gamma ** d`` (no grad)."""
    from scipy.ndimage import distance_transform_edt

    m = (mask.detach() > 0.5).cpu().numpy()
    out = np.ones(m.shape, np.float64)
    for b in range(m.shape[0]):
        hole = m[b, 0]
        if hole.any() and not hole.all():
            out[b, 0] = np.power(gamma, distance_transform_edt(hole))
    return torch.from_numpy(out).to(device=mask.device, dtype=torch.float32)


def discounted_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  weights: torch.Tensor | None = None, gamma: float = 0.99) -> torch.Tensor:
    """``sum(|pred - target| * W * M) / max(C * sum(M), 1)``; W = :func:`spatial_discount` unless given."""
    m = (mask > 0.5).to(pred.dtype)
    if weights is None:
        weights = spatial_discount(mask, gamma)
    c = pred.shape[1]
    return ((pred - target).abs() * weights * m).sum() / torch.clamp_min(m.sum() * c, 1.0)


def known_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred - target|`` over known pixels (M == 0) and channels."""
    k = (mask <= 0.5).to(pred.dtype)
    return ((pred - target).abs() * k).sum() / torch.clamp_min(k.sum() * pred.shape[1], 1.0)


# ------------------------------------------------------------------------------------------------ WGAN-GP
def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     mask: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: ``mean_b (||grad D(x_hat_b)||_2 - 1)^2``, ``x_hat = e real + (1 - e) fake``, e ~ U(0, 1) per
    sample (or ``eps`` (B,)). With ``mask`` the gradient is multiplied by it first (DeepFill's masked GP)."""
    B = real.shape[0]
    if eps is None:
        eps = torch.rand(B, device=real.device, dtype=real.dtype)
    e = eps.view(B, *([1] * (real.dim() - 1)))
    x_hat = (e * real.detach() + (1 - e) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (g,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    if mask is not None:
        g = g * mask
    norm = torch.sqrt(g.flatten(1).pow(2).sum(1) + 1e-12)
    return ((norm - 1.0) ** 2).mean()


def d_wgan_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return d_fake.mean() - d_real.mean()


def g_wgan_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


# ------------------------------------------------------------------------------------------------ identity
def arc_to_chip_theta(arc_size: int = 112, chip_size: int = 150) -> torch.Tensor:
    """(1, 2, 3) ``F.affine_grid`` theta (align_corners=False) sampling the 150 dlib chip out of a 112
    ArcFace crop: chip pixel -> crop pixel is the inverse of the least-squares similarity ARCFACE_112 ->
    DLIB_150, sandwiched between the pixel <-> normalised coordinate maps (pixel centres at integers)."""
    from sdk.align import ARCFACE_112, DLIB_150, similarity_to_template

    s = np.vstack([similarity_to_template(ARCFACE_112, DLIB_150), [0, 0, 1]])  # crop px -> chip px
    chip_from_norm = np.array([[chip_size / 2, 0, (chip_size - 1) / 2], [0, chip_size / 2, (chip_size - 1) / 2],
                               [0, 0, 1]])
    norm_from_arc = np.array([[2 / arc_size, 0, 1 / arc_size - 1], [0, 2 / arc_size, 1 / arc_size - 1], [0, 0, 1]])
    theta = norm_from_arc @ np.linalg.inv(s) @ chip_from_norm
    return torch.tensor(theta[:2], dtype=torch.float32).unsqueeze(0)


#: the dlib unit whose output is R^l: the last of the first residual level (3 x ares<32>, 35x35)
LOW_UNIT = 2


class DlibIdentityFeatures(nn.Module):
    """R for :class:`IdentityDiversityLoss`: 112 crop in [-1, 1] -> (R^l, R^h) of the frozen dlib teacher.

    ``forward(x)``: x (B, 3, 112, 112) in [-1, 1], BGR when ``bgr`` (the trainer's convention) -> fixed
    affine warp into the 150x150 dlib chip (see the module docstring), RGB [0, 255] ->
    (low (B, 32, 35, 35) after dlib's first residual level, high (B, 128) raw descriptor).
    """

    def __init__(self, teacher: nn.Module, bgr: bool = True, arc_size: int = 112):
        super().__init__()
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.bgr = bgr
        self.register_buffer("theta", arc_to_chip_theta(arc_size, 150))

    def train(self, mode: bool = True):  # the teacher stays in eval mode
        super().train(mode)
        self.teacher.eval()
        return self

    def chip(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) [-1, 1] -> (B, 3, 150, 150) RGB [0, 255] dlib chip (differentiable)."""
        if self.bgr:
            x = x.flip(1)
        B = x.shape[0]
        grid = F.affine_grid(self.theta.expand(B, 2, 3).to(x.dtype), [B, 3, 150, 150], align_corners=False)
        c = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (c + 1.0) * 127.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, low = self.teacher.trunk(self.chip(x), tap=LOW_UNIT)
        return low, self.teacher.fc(pooled)


@torch.no_grad()
def identity_centres(recognizer: Callable, images: torch.Tensor, labels: torch.Tensor, n_ids: int,
                     batch: int = 64) -> torch.Tensor:
    """ID-GAN eq. 5: (n_ids, D) mean of ``R^h(Y_i)`` over the clean faces ``images`` of each identity
    (labels in [0, n_ids)); identities without faces get a zero row."""
    feats = []
    for s in range(0, len(images), batch):
        feats.append(recognizer(images[s:s + batch])[1].float())
    f = torch.cat(feats)
    labels = labels.to(torch.long)
    labels = labels.to(f.device)
    sums = f.new_zeros(n_ids, f.shape[1]).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=n_ids).clamp_min(1).to(f.dtype)
    return sums / counts[:, None]


class IdentityDiversityLoss(nn.Module):
    """ID-GAN eq. 6 (see the module docstring); ``forward(X, Y, labels) -> (loss, parts dict)``.

    Args:
        recognizer: module / callable ``x -> (R^l(x), R^h(x))``, frozen (gradients flow to X only).
        centres: (C, D) identity centres f_id (:func:`identity_centres`), indexed by ``labels``.
        alpha_l, alpha_h, beta: eq. 6 constants (0.5, 0.05, 0.5).
    """

    def __init__(self, recognizer: Callable, centres: torch.Tensor, alpha_l: float = 0.5, alpha_h: float = 0.05,
                 beta: float = 0.5):
        super().__init__()
        self.recognizer = recognizer
        self.register_buffer("centres", centres.detach().float().clone())
        self.alpha_l, self.alpha_h, self.beta = alpha_l, alpha_h, beta

    @staticmethod
    def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((a - b).flatten(1).pow(2).sum(1) + 1e-12)

    def forward(self, completed: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor):
        lx, hx = self.recognizer(completed)
        with torch.no_grad():
            ly, hy = self.recognizer(truth)
        f = self.centres[labels.to(torch.long)]
        inst_l = self._dist(lx, ly)
        inst_h = self._dist(hx, hy)
        div = torch.clamp_min(self._dist(hx, f) - self._dist(hy, f), 0.0)
        loss = (self.alpha_l * inst_l + self.alpha_h * inst_h + self.beta * div).mean()
        return loss, {"id_low": inst_l.detach().mean().item(), "id_high": inst_h.detach().mean().item(),
                      "id_div": div.detach().mean().item()}

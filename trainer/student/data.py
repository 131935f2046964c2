"""Student training data: masked chips (:class:`MaskedChipDataset`), identity-balanced PK batches, collation.

Each sample re-warps the student's chip (BGR; the 150x150 dlib chip, or the 112x112 ArcFace crop for resnet18 /
mobilefacenet) from the image, paints a synthetic occluder on it with probability ``mask_prob``
(:class:`trainer.data.synthesis.MaskSynthesizer`, seeded by ``(seed, epoch, index)``: reproducible and
resumable), optionally completes it with the inpainter, and converts to RGB.  An image that cannot be read
raises :class:`trainer.data.face_arrays.UnreadableImageError` naming it (never a black chip).
"""
from __future__ import annotations

import random
from typing import Sequence

import cv2
import numpy as np

from trainer.data.face_arrays import UnreadableImageError

__all__ = ["sample_seed", "MaskedChipDataset", "pk_batches", "collate", "worker_init", "arc_matrices"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Deterministic synthesis seed of sample ``index`` in ``epoch``."""
    return (seed * 1_000_003 + epoch * 7_919_033 + index * 104_729 + 17) % (2**63)


class MaskedChipDataset:
    """``ds[(index, epoch)] -> (masked RGB uint8 (S,S,3), clean RGB uint8 (S,S,3), label int, index int)``.

    ``paths``/``chip_m``/``landmarks`` come from :class:`trainer.data.faces.AlignedSet` (frame->chip matrices and
    frame landmarks); ``S = chip_size``: 150 with the dlib chip matrices, 112 with ArcFace-crop matrices
    (``similarity_to_template(landmarks, ARCFACE_112)``, :func:`arc_matrices`).  The occluder is synthesised on
    the chip from the chip's landmarks.  ``epoch < 0`` means validation: always masked (``val_synth``), seed
    independent of epoch.  Picklable (DataLoader workers): the synthesizer reloads its templates lazily.
    """

    def __init__(self, paths: Sequence[str], chip_m: np.ndarray, landmarks: np.ndarray, labels: Sequence[int],
                 synth, mask_prob: float, seed: int, val_synth=None, chip_size: int = 150, completer=None,
                 upper_view_prob: float = 0.0, upper_view=None):
        self.paths = list(paths)
        self.chip_m = np.asarray(chip_m, np.float64)
        self.landmarks = np.asarray(landmarks, np.float32)
        self.labels = np.asarray(labels, np.int64)
        self.synth, self.val_synth = synth, val_synth
        self.mask_prob, self.seed, self.chip_size = float(mask_prob), int(seed), int(chip_size)
        self.completer = completer  # trainer.data.completion.ChipCompleter: masked chips are completed
        #: training samples (never validation) shown as their upper-face view (sdk.views.MaskAwareConfig)
        self.upper_view_prob, self.upper_view = float(upper_view_prob), upper_view

    def _complete(self, i: int, masked: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """``masked`` chip of image ``i`` with its hole filled by the inpainter (through the ArcFace crop)."""
        if self.completer is None or not hole.any():
            return masked
        from sdk.align import ARCFACE_112, similarity_to_template
        from trainer.data.completion import chip_to_arc

        mat = chip_to_arc(self.chip_m[i], similarity_to_template(self.landmarks[i], ARCFACE_112))
        return self.completer(masked[None], hole[None], mat[None])[0]

    def __len__(self) -> int:
        return len(self.paths)

    def clean_bgr(self, i: int) -> np.ndarray:
        from sdk.align import warp

        img = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if img is None:
            raise UnreadableImageError(f"{self.paths[i]}: cannot read the image (missing, truncated or not an image)")
        return warp(img, self.chip_m[i], (self.chip_size, self.chip_size))

    def chip_landmarks(self, i: int) -> np.ndarray:
        m = self.chip_m[i]
        return (self.landmarks[i] @ m[:, :2].T + m[:, 2]).astype(np.float32)

    def __getitem__(self, key) -> tuple[np.ndarray, np.ndarray, int, int]:
        i, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        clean = self.clean_bgr(i)
        sd = sample_seed(self.seed, epoch, i)
        if epoch < 0:
            synth = self.val_synth or self.synth
            r = synth(clean, self.chip_landmarks(i), sd, category="simple")
            masked = self._complete(i, r.masked, r.mask)
        else:
            rng = np.random.default_rng(sd)
            if rng.random() < self.mask_prob:
                r = self.synth(clean, self.chip_landmarks(i), rng)
                masked = self._complete(i, r.masked, r.mask)
            else:
                masked = clean
            if self.upper_view is not None and rng.random() < self.upper_view_prob:
                from sdk.views import upper_view

                masked = upper_view(masked[None], self.chip_landmarks(i)[None], self.upper_view)[0]
        return (np.ascontiguousarray(masked[:, :, ::-1]), np.ascontiguousarray(clean[:, :, ::-1]),
                int(self.labels[i]), i)


def pk_batches(labels: np.ndarray, p: int, k: int, n_batches: int, seed: int, epoch: int) -> list[list[int]]:
    """Identity-balanced batches: each has ``p`` distinct identities x ``k`` images (with repetition only when an
    identity has fewer than ``k`` images).  Deterministic in ``(seed, epoch)``."""
    rng = random.Random(seed * 1009 + epoch)
    by_id: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_id.setdefault(int(y), []).append(i)
    ids = sorted(by_id)
    if len(ids) < p:
        raise ValueError(f"need at least P={p} identities, have {len(ids)}")
    pools = {y: [] for y in ids}
    order: list[int] = []
    out = []
    while len(out) < n_batches:
        batch = []
        chosen = []
        while len(chosen) < p:
            if not order:
                order = ids[:]
                rng.shuffle(order)
            y = order.pop()
            if y not in chosen:
                chosen.append(y)
        for y in chosen:
            for _ in range(k):
                if not pools[y]:
                    pools[y] = by_id[y][:]
                    rng.shuffle(pools[y])
                batch.append(pools[y].pop())
        out.append(batch)
    return out


def collate(items):
    """``(masked, clean, labels, index)`` tensors of a list of :class:`MaskedChipDataset` items (uint8 NHWC RGB)."""
    import torch

    masked = torch.from_numpy(np.stack([it[0] for it in items]))
    clean = torch.from_numpy(np.stack([it[1] for it in items]))
    labels = torch.tensor([it[2] for it in items], dtype=torch.int64)
    index = torch.tensor([it[3] for it in items], dtype=torch.int64)
    return masked, clean, labels, index


def worker_init(_):
    """DataLoader worker start: one OpenCV and one torch thread per worker."""
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def arc_matrices(landmarks: np.ndarray) -> np.ndarray:
    """(N, 2, 3) float64 frame -> 112x112 ArcFace-crop matrices from (N, 5, 2) frame landmarks (MTCNN order)."""
    from sdk.align import ARCFACE_112, similarity_to_template

    lms = np.asarray(landmarks, np.float32)
    out = np.zeros((len(lms), 2, 3), np.float64)
    for i, lm in enumerate(lms):
        out[i] = similarity_to_template(lm, ARCFACE_112)
    return out

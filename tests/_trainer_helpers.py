"""Plain helpers of the trainer's tests (the fixtures that use them are in ``conftest.py``)."""
from __future__ import annotations

import csv

import numpy as np

#: MTCNN landmarks of the astronaut in skimage.data.astronaut() (the baseline detector's output).
ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)


def chip_variants(img: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` slightly rotated / scaled / brightened copies of a 150x150 chip (deterministic)."""
    import cv2

    out = []
    for k in range(n):
        m = cv2.getRotationMatrix2D((75, 75), -4 + 3 * k, 1.0 - 0.03 * k)
        v = cv2.warpAffine(img, m, (150, 150), borderMode=cv2.BORDER_REFLECT)
        out.append(cv2.convertScaleAbs(v, alpha=1.0 + 0.06 * (k - 1), beta=0))
    return out


def tiny_faces(astronaut_bgr: np.ndarray, camera_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Three "identities": the astronaut, the camera man, the mirrored astronaut (BGR face regions)."""
    return {"astronaut": astronaut_bgr[20:250, 120:350], "camera": camera_bgr[40:300, 150:410],
            "astronaut_flip": astronaut_bgr[20:250, 120:350][:, ::-1]}


def with_val(prep):
    """A student ``Prepared`` set with every image also in validation (9 images: 18 genuine + 18 impostor pairs)."""
    from trainer.student.prepare import Prepared

    return Prepared(prep.paths, prep.identities, prep.labels, prep.train_idx, np.arange(len(prep.paths)),
                    prep.chip_m, prep.landmarks, prep.teacher, prep.train_ids, prep.train_ids)


def csv_rows(path) -> list[dict]:
    """Rows of a CSV log as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def photo_variants(img: np.ndarray, n: int) -> list[np.ndarray]:
    """n different photos of the same face: mirror, scale, shift, brightness, a little rotation."""
    import cv2

    out = []
    h, w = img.shape[:2]
    for k in range(n):
        a = -6 + 4 * k
        m = cv2.getRotationMatrix2D((w / 2, h / 2), a, 1.0 - 0.05 * k)
        v = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        v = cv2.convertScaleAbs(v, alpha=1.0 + 0.08 * (k - 1), beta=0)
        out.append(v[:, ::-1].copy() if k % 2 else v)
    return out

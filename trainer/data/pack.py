"""Face packs: aligned 112x112 faces + landmarks + identities in one ``.npz`` (no images, no detector needed).

A pack lets a trainer run where the raw data, the detector or OpenCV's readers are not (a lent GPU machine, a
container): ``python trainer/main.py pack-faces --data ../shared/data/celeba_subset --out faces.npz`` aligns once
(cached, :func:`trainer.data.faces.load_faces`) and stores each crop as a JPEG (quality 95 by default,
~5 KB a face) so that ~6,000 faces travel in ~30 MB.  ``--faces faces.npz`` on the ``segmenter`` and
``inpainter`` commands reads it instead of ``--data``.

Arrays in the ``.npz`` (``allow_pickle=False`` loadable):

==============  ===================================================================================
``jpeg``        (total_bytes,) uint8: the JPEG files concatenated (BGR crops, 112x112)
``offsets``     (N + 1,) int64: file ``i`` is ``jpeg[offsets[i]:offsets[i + 1]]``
``landmarks``   (N, 5, 2) float32: 5 landmarks in crop pixels (MTCNN order)
``identities``  (N,) unicode: identity of each face
``version``     () int: format version (1)
==============  ===================================================================================
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import cv2
import numpy as np

from trainer.data.face_arrays import FaceArrays

log = logging.getLogger(__name__)

PACK_VERSION = 1


def save_face_pack(faces, path: str | Path, quality: int = 95) -> Path:
    """Write ``faces`` (:class:`trainer.data.face_arrays.FaceArrays`) to ``path`` (.npz), atomically; returns the
    path."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    blobs = []
    for i, crop in enumerate(faces.crops):
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError(f"could not JPEG-encode face {i}")
        blobs.append(buf.reshape(-1))
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, jpeg=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), offsets=offsets,
             landmarks=np.asarray(faces.landmarks, np.float32), identities=np.array(faces.identities, dtype=str),
             version=np.array(PACK_VERSION))
    tmp.replace(path)
    log.info("face pack %s: %d faces, %.1f MB", path, len(blobs), path.stat().st_size / 1e6)
    return path


def load_face_pack(path: str | Path):
    """Read a pack written by :func:`save_face_pack` -> :class:`trainer.data.face_arrays.FaceArrays`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face pack not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        jpeg, offsets, lms, ids = z["jpeg"], z["offsets"], z["landmarks"], z["identities"]
        version = int(z["version"])
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a face pack (python trainer/main.py pack-faces writes them): {e}") from e
    if version != PACK_VERSION:
        raise ValueError(f"{path}: face pack version {version}, this code reads version {PACK_VERSION}")
    n = len(offsets) - 1
    if lms.shape != (n, 5, 2) or len(ids) != n:
        raise ValueError(f"{path}: inconsistent face pack ({n} offsets, landmarks {lms.shape}, {len(ids)} identities)")
    crops = []
    for i in range(n):
        img = cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: face {i} is not a readable JPEG (truncated pack?)")
        crops.append(img)
    shapes = {c.shape for c in crops}
    if len(shapes) > 1:
        raise ValueError(f"{path}: faces of different sizes {sorted(shapes)}")
    arr = np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
    return FaceArrays(arr, lms.astype(np.float32), [str(s) for s in ids])

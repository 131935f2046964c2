"""The public API: ``Recognizer(model).identify(frame)``.

Data flows one way: frame (BGR uint8) -> detect (faces: boxes + 5 landmarks) -> align (crops) ->
[segment -> complete, when the bundle has them] -> embed (unit vectors) -> match (gallery top-k) -> Match.

With a ``complete`` stage, faces the segmenter calls occluded are completed on their 112x112 ArcFace crop and
pasted back into a *copy* of the frame; the embedder cuts its own chip from that copy (the caller's frame is
never modified).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from sdk import _registry
from sdk.align import ARCFACE_CROP, CropSpec, similarity_to_template, warp
from sdk.bundle import Bundle, load_bundle
from sdk.errors import BundleError, GalleryError
from sdk.frame import as_bgr, read_image
from sdk.gallery import Gallery
from sdk.types import Face, Match

log = logging.getLogger(__name__)

ImageLike = Union[np.ndarray, str, Path]
STAGE_NAMES = ("detect", "align", "segment", "complete", "embed", "match")


@dataclass(frozen=True)
class RecognizerConfig:
    """Run-time options (bundle values are the defaults where ``None``).

    Attributes:
        threshold: cosine similarity at or above which a face is given the best gallery identity.
        top_k: candidates kept per face in :attr:`Match.candidates`.
        min_face_size: smallest face the detector looks for, in frame pixels.
        max_side: frames with a longer side are downscaled (for detection only) to this many pixels.
        min_det_score: faces the detector scores below this are dropped.
        verify_hashes: check every model file's SHA-256 against the manifest when loading.
    """

    threshold: float | None = None
    top_k: int = 5
    min_face_size: int | None = None
    max_side: int | None = None
    min_det_score: float = 0.9
    verify_hashes: bool = True


@dataclass(frozen=True)
class Verification:
    """Result of :meth:`Recognizer.verify`: cosine ``similarity`` and whether it reaches ``threshold``."""

    similarity: float
    same: bool
    threshold: float


class Recognizer:
    """Recognise (possibly masked) faces against an enrolled gallery.

    Args:
        model: built-in bundle name (``"baseline"``, the default), a bundle folder, or its ``manifest.json``.
        gallery: SQLite gallery file (created if missing) or ``None`` for an in-memory gallery.
        config: run-time options.

    Example::

        rec = Recognizer(gallery="people.db")
        rec.enroll("alice", ["alice1.jpg", "alice2.jpg"])
        for m in rec.identify(cv2.imread("door.jpg")):
            print(m.identity, m.similarity, m.box)
    """

    def __init__(self, model: str | Path | None = None, gallery: str | Path | None = None,
                 config: RecognizerConfig = RecognizerConfig()):
        self.config = config
        self.bundle: Bundle = load_bundle(model, verify_hash=config.verify_hashes)
        det_opts = {k: v for k, v in (("min_face_size", config.min_face_size), ("max_side", config.max_side)) if v is not None}
        self.detector = _registry.build_stage(self.bundle.stages["detect"], det_opts)
        self.embedder = _registry.build_stage(self.bundle.stages["embed"])
        seg_spec, comp_spec = self.bundle.stages["segment"], self.bundle.stages["complete"]
        #: occlusion segmenter (``None`` in baseline bundles): fills :attr:`Match.occlusion`.
        self.segmenter = _registry.build_stage(seg_spec) if seg_spec is not None else None
        #: face inpainter (``None`` without a ``complete`` stage): fills the segmenter's holes before embedding.
        self.completer = _registry.build_stage(comp_spec) if comp_spec is not None else None
        if self.completer is not None:
            a, b = self._seg_crop, self.completer.crop_spec
            if self.segmenter is None or a.size != b.size or not np.array_equal(a.template, b.template):
                raise BundleError(f"bundle {self.bundle.name}: the complete stage needs a segment stage on the same "
                                  f"crop ({b.size}), got {None if self.segmenter is None else a.size}")
        self.threshold = float(config.threshold if config.threshold is not None else self.bundle.threshold)
        self.gallery = Gallery(gallery, self.embedder.model_id, self.embedder.dim)
        #: seconds spent per stage in the last call of :meth:`identify` (for benchmarks and logging).
        self.last_timings: dict[str, float] = {}
        log.info("Recognizer ready: bundle %s (%s mode), %r", self.bundle.name, self.bundle.mode, self.gallery)

    # -- stages -----------------------------------------------------------------------------------------
    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last_timings[stage] = time.perf_counter() - t0

    def prepare(self) -> "Recognizer":
        """Warm up every stage (first-call latency), returns self."""
        self.detector.prepare()
        self.embedder.prepare()
        if self.segmenter is not None:
            self.segmenter.prepare()
        if self.completer is not None:
            self.completer.prepare()
        return self

    @property
    def _seg_crop(self) -> CropSpec:
        return getattr(self.segmenter, "crop_spec", ARCFACE_CROP)

    def _segment(self, bgr: np.ndarray, faces: Sequence[Face]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """``(matrices, crops, masks, probs)`` of the segment stage for ``faces`` (at least one) of a BGR frame:
        N (2, 3) frame -> crop matrices, (N, h, w, 3) uint8 BGR crops, (N, h, w) float32 occlusion maps in
        [0, 1], (N,) float32 occlusion probabilities."""
        spec = self._seg_crop
        mats = [similarity_to_template(f.landmarks, spec.template) for f in faces]
        crops = np.stack([warp(bgr, m, spec.size) for m in mats])
        masks, probs = self.segmenter.segment(crops)
        return mats, crops, masks, probs

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 frame (validated), best score first, below ``min_det_score`` dropped."""
        bgr = as_bgr(frame)
        return [f for f in self.detector.detect(bgr) if f.score >= self.config.min_det_score]

    def occlusion(self, frame: np.ndarray, faces: Sequence[Face]) -> list[float | None]:
        """Per-face occlusion probability from the bundle's segment stage (``None`` each without one).

        The segmenter sees the 112x112 ArcFace crop of each face (:data:`sdk.align.ARCFACE_CROP`).
        """
        if self.segmenter is None:
            return [None] * len(faces)
        if not faces:
            return []
        return [float(p) for p in self._segment(as_bgr(frame), faces)[3]]

    def embed_faces(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """(N, dim) float32 unit-norm embeddings for ``faces`` of ``frame``."""
        bgr = as_bgr(frame)
        with self._timed("align"):
            crops = self.embedder.crops(bgr, faces)
        with self._timed("embed"):
            return self.embedder.embed_crops(crops)

    # -- public API ---------------------------------------------------------------------------------------
    def identify(self, frame: np.ndarray) -> list[Match]:
        """Detect, [segment, complete,] embed and match every face in ``frame``.

        Args:
            frame: uint8 ``(H, W, 3)`` BGR (OpenCV order); grey ``(H, W)`` and BGRA are converted.

        Returns:
            One :class:`Match` per face, best detection first; ``identity`` is ``None`` for faces whose
            best similarity is below the threshold. A frame with no face returns ``[]``.
        """
        self.last_timings = {}
        bgr = as_bgr(frame)
        with self._timed("detect"):
            faces = [f for f in self.detector.detect(bgr) if f.score >= self.config.min_det_score]
        return self._identify_faces(bgr, faces)

    def identify_faces(self, frame: np.ndarray, faces: Sequence[Face]) -> list[Match]:
        """Like :meth:`identify` for faces found elsewhere (a tracker, another detector): no detection.

        Args:
            frame: uint8 ``(H, W, 3)`` BGR; ``faces``: boxes and 5 landmarks in that frame's pixels.
        Returns:
            One :class:`Match` per face, in the order given.
        """
        self.last_timings = {}
        return self._identify_faces(as_bgr(frame), list(faces))

    def _identify_faces(self, bgr: np.ndarray, faces: list[Face]) -> list[Match]:
        occ: list[float | None] = [None] * len(faces)
        completed = np.zeros(len(faces), bool)
        emb_frame = bgr  # read-only from here on: as_bgr may return the caller's own array
        if self.segmenter is not None:
            with self._timed("segment"):
                if faces:
                    mats, crops, masks, probs = self._segment(bgr, faces)
                    occ = [float(p) for p in probs]
            if self.completer is not None and faces:
                with self._timed("complete"):
                    todo = np.flatnonzero(probs >= self.completer.min_occlusion)
                    if len(todo):
                        # holes = the segmenter's M at its threshold (0.5); complete_in_frame grows them by the
                        # stage's `dilate` px (1) so the occluder's anti-aliased edge is filled too
                        emb_frame, done = self.completer.complete_in_frame(
                            bgr, crops[todo], self.segmenter.binary_masks(masks[todo]), [mats[i] for i in todo])
                        completed[todo] = done
        emb = self.embed_faces(emb_frame, faces)
        with self._timed("match"):
            hits = self.gallery.search(emb, self.config.top_k) if faces else []
        matches = []
        for face, face_hits, face_occ, done in zip(faces, hits, occ, completed):
            best = face_hits[0] if face_hits else None
            sim = best.similarity if best else float("nan")
            ident = best.name if best is not None and sim >= self.threshold else None
            matches.append(Match(face.box, face.landmarks, face.score, face_occ, ident, sim,
                                 [(h.name, h.similarity) for h in face_hits], completed=bool(done)))
        return matches

    def embed_largest(self, image: ImageLike, *, what: str = "image") -> np.ndarray:
        """(dim,) embedding of the largest face in ``image`` (a frame or a file path).

        Raises:
            GalleryError: no face was found (the message names ``what``).
        """
        frame = read_image(image) if isinstance(image, (str, Path)) else as_bgr(image, name=what)
        faces = self.detect(frame)
        if not faces:
            raise GalleryError(f"{what}: no face found")
        largest = max(faces, key=lambda f: f.width * f.height)
        return self.embed_faces(frame, [largest])[0]

    def enroll(self, name: str, images: ImageLike | Sequence[ImageLike]) -> int:
        """Add ``name`` to the gallery from one or more images (frames or file paths), largest face of each.

        All images are processed before anything is written: if any image is unreadable or has no face,
        :class:`GalleryError` (or the frame's ``TypeError``/``ValueError``) is raised and the gallery is
        unchanged. Returns the number of embeddings added.
        """
        if isinstance(images, (np.ndarray, str, Path)):
            images = [images]
        images = list(images)
        if not images:
            raise GalleryError(f"enroll {name!r}: no images given")
        embs, sources = [], []
        for i, img in enumerate(images):
            what = f"enroll {name!r}: image {i}" + (f" ({img})" if isinstance(img, (str, Path)) else "")
            try:
                embs.append(self.embed_largest(img, what=what))
            except (FileNotFoundError, ValueError, TypeError) as e:
                if isinstance(e, GalleryError):
                    raise
                raise type(e)(f"{what}: {e}") from None
            sources.append(str(img) if isinstance(img, (str, Path)) else f"array#{i}")
        return self.gallery.add(name, np.stack(embs), sources)

    def verify(self, a: ImageLike, b: ImageLike) -> Verification:
        """Are the largest faces of ``a`` and ``b`` the same person? (cosine similarity vs threshold)."""
        ea, eb = self.embed_largest(a, what="image a"), self.embed_largest(b, what="image b")
        sim = float(np.dot(ea, eb))
        return Verification(sim, sim >= self.threshold, self.threshold)

    def close(self) -> None:
        """Close the gallery file."""
        self.gallery.close()

    def __enter__(self) -> "Recognizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

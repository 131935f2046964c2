"""The public API: ``Recognizer(model).identify(frame)``.

Data flows one way: frame (BGR uint8) -> detect (faces: boxes + 5 landmarks) -> face stages -> match
(gallery top-k) -> Match. The face stages are whatever the bundle has, in the order of
:data:`sdk.stages.FACE_STAGES` (segment -> complete -> embed), run in one loop on a per-call
:class:`~sdk.stages.FaceBatch`; the Recognizer knows their protocols, never their kinds.

``identify``, ``identify_faces``, ``embed_faces``, ``enroll`` and ``verify`` all run the *same* face stages on
a face: with a ``complete`` stage, faces the segmenter calls occluded are completed on their 112x112 ArcFace
crop and pasted back into a *copy* of the frame before the embedder cuts its own chip from it, whether the
face is being enrolled or identified (the caller's frame is never modified).

Engines: every model stage runs on a :class:`~sdk.backends.Backend` chosen per stage from the bundle's files and
the device (:mod:`sdk.backends.select`): ``RecognizerConfig(backend="auto", device="auto")`` is ONNX Runtime on the
CPU unless a CUDA device is visible and the bundle has TensorRT engines or torch weights; ``backend="torch"`` /
``"tensorrt"`` / ``"ort"`` forces one (stages without that engine's file keep ONNX Runtime, logged; a bundle with no
such file at all is refused). ``Recognizer("engine.plan")`` loads the bundle the engine's sidecar names with that
stage on TensorRT.

Thread safety: a Recognizer keeps no per-call state. Per-stage timings are returned to the caller who asks
(``identify(frame, timings=d)`` fills the dict ``d``); stages and backends are safe to share between threads.
The gallery's own locking is the gallery's business (:mod:`sdk.gallery`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from sdk import _registry, views
from sdk.bundle import Bundle, OperatingPoints, load_bundle
from sdk.errors import BundleError, GalleryError, NoFaceError
from sdk.frame import as_bgr, read_image
from sdk.gallery import Gallery, check_name
from sdk.stages import FACE_STAGES, Completer, Detector, Embedder, FaceBatch, FaceStage, Segmenter, Stage, timed
from sdk.types import Face, Match, check_faces

log = logging.getLogger(__name__)

ImageLike = Union[np.ndarray, str, Path]
#: keys of the per-stage timings (seconds) that ``identify(frame, timings=d)`` writes into ``d``
STAGE_NAMES = ("detect", "align", "segment", "complete", "embed", "match")


@dataclass(frozen=True)
class RecognizerConfig:
    """Run-time options (bundle values are the defaults where ``None``).

    Attributes:
        threshold: cosine similarity at or above which a face is given the best gallery identity, for every
            occlusion state (``None``: the bundle's per-state operating points, :attr:`Recognizer.operating_points`).
        top_k: candidates kept per face in :attr:`Match.candidates`.
        min_face_size: smallest face the detector looks for, in frame pixels.
        max_side: frames with a longer side are downscaled (for detection only) to this many pixels.
        min_det_score: faces the detector scores below this are dropped (``None``: the bundle's
            ``match.min_det_score``, 0.9 when it has none -- MTCNN's operating point; detectors with another
            score scale, such as LTDet, state theirs in the bundle).
        verify_hashes: check every model file's SHA-256 against the manifest when loading.
        backend: ``"auto"`` (per stage, from the bundle's files and the device), ``"ort"`` (ONNX Runtime),
            ``"torch"`` (the bundle's torch weights: fp16, batched, CUDA graphs) or ``"tensorrt"`` (its engines).
        device: ``"auto"`` (CUDA when a device is visible), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: torch backend: ``"auto"`` (fp16 on CUDA, fp32 on the CPU), ``"fp32"`` or ``"fp16"``.
        cuda_graphs: torch backend on CUDA: replay captured CUDA graphs per batch bucket.
    """

    threshold: float | None = None
    top_k: int = 5
    min_face_size: int | None = None
    max_side: int | None = None
    min_det_score: float | None = None
    verify_hashes: bool = True
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        from sdk.backends.base import BackendConfig
        from sdk.backends.select import engine_name

        object.__setattr__(self, "backend", engine_name(self.backend))
        BackendConfig(device=self.device, precision=self.precision)  # ValueError naming a bad device / precision


@dataclass(frozen=True)
class Verification:
    """Result of :meth:`Recognizer.verify`: cosine ``similarity`` and whether it reaches ``threshold``, the
    threshold of the pair's occlusion ``operating_point`` (``"clean"``, ``"probe_occluded"``, ``"both_occluded"``;
    ``"config"`` when :attr:`RecognizerConfig.threshold` overrides the bundle's)."""

    similarity: float
    same: bool
    threshold: float
    operating_point: str = "clean"


class Recognizer:
    """Recognise (possibly masked) faces against an enrolled gallery.

    Args:
        model: built-in bundle name (``"default"`` when ``None``), a bundle folder, its ``manifest.json``, or a
            TensorRT engine (``engine.plan``, whose ``engine.plan.json`` names the bundle and stage it belongs to).
        gallery: SQLite gallery file (created if missing) or ``None`` for an in-memory gallery.
        config: run-time options.

    Attributes:
        bundle: the loaded manifest; stages: the stage objects by stage name, in pipeline order;
        gallery; threshold.

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
        det_opts.update(_detect_run_options(config))
        detector = _registry.build_stage(self.bundle.stages["detect"], det_opts)
        run_opts = _face_run_options(self.bundle, config)
        face_stages: dict[str, FaceStage] = {}
        for name in FACE_STAGES:
            spec = self.bundle.stages.get(name)
            if spec is None:
                continue
            stage = _registry.build_stage(spec, run_opts.get(name))
            try:
                stage.connect(face_stages)  # type: ignore[union-attr]
            except BundleError as e:
                raise BundleError(f"bundle {self.bundle.name}: {e}") from None
            face_stages[name] = stage  # type: ignore[assignment]
        if not isinstance(face_stages.get("embed"), Embedder):
            raise BundleError(f"bundle {self.bundle.name}: no embed stage")
        #: every stage by stage name, in pipeline order (detect first)
        self.stages: dict[str, Stage] = {"detect": detector, **face_stages}
        self._face_stages = face_stages
        #: thresholds per occlusion state (the bundle's, or ``config.threshold`` for all states)
        self.operating_points: OperatingPoints = (OperatingPoints.single(float(config.threshold))
                                                  if config.threshold is not None else self.bundle.operating_points)
        if self.bundle.match.get("uncalibrated") and config.threshold is None:
            log.warning("bundle %s: its threshold is not calibrated for its embedder (%s)", self.bundle.name,
                        self.bundle.match["uncalibrated"])
        #: threshold for two clean faces (the one threshold of bundles without per-state operating points)
        self.threshold = self.operating_points.clean
        if self.operating_points.far is not None and "segment" not in face_stages:
            log.warning("bundle %s declares per-occlusion thresholds but has no segment stage: every face counts "
                        "as clean", self.bundle.name)
        #: detector score below which faces are dropped (config, else the bundle's ``match.min_det_score``, else 0.9)
        self.min_det_score = float(config.min_det_score if config.min_det_score is not None
                                   else self.bundle.match.get("min_det_score", 0.9))
        #: mask-aware matching (``match.mask_aware``, :mod:`sdk.views`): templates of a full and an upper-face view
        self.mask_aware: views.MaskAwareConfig | None = self.bundle.mask_aware
        if self.mask_aware is not None and not callable(getattr(self.embedder, "embed_crops", None)):
            raise BundleError(f"bundle {self.bundle.name}: match.mask_aware needs an embed stage that embeds crops "
                              f"(embed_crops), {type(self.embedder).__name__} does not")
        if self.mask_aware is not None and "segment" not in face_stages:
            log.warning("bundle %s: mask_aware matching needs a segment stage to tell occluded probes apart; every "
                        "probe is compared as clean", self.bundle.name)
        #: what galleries of this Recognizer store: the embedder's id (+ the mask-aware layout) and template width
        self.template_id = self.embedder.model_id + (self.mask_aware.id_suffix if self.mask_aware else "")
        self.template_dim = self.embedder.dim * (2 if self.mask_aware else 1)
        self.gallery = Gallery(gallery, self.template_id, self.template_dim)
        log.info("Recognizer ready: bundle %s (%s mode), %r", self.bundle.name, self.bundle.mode, self.gallery)

    # -- stages -----------------------------------------------------------------------------------------
    @property
    def engines(self) -> dict[str, str]:
        """What runs each model stage, e.g. ``{"segment": "torch on cuda (torch-cuda:0-fp16)", ...}``."""
        out = {}
        for name, stage in self.stages.items():
            b = getattr(stage, "backend", None)
            out[name] = (f"{b.engine} on {b.device} ({', '.join(b.providers)})" if b is not None
                         else type(stage).__name__)
        return out

    @property
    def detector(self) -> Detector:
        return self.stages["detect"]  # type: ignore[return-value]

    @property
    def segmenter(self) -> Segmenter | None:
        """The occlusion segmenter (``None`` in baseline bundles): fills :attr:`Match.occlusion`."""
        return self.stages.get("segment")  # type: ignore[return-value]

    @property
    def completer(self) -> Completer | None:
        """The face inpainter (``None`` without a ``complete`` stage): fills the segmenter's holes before embedding."""
        return self.stages.get("complete")  # type: ignore[return-value]

    @property
    def embedder(self) -> Embedder:
        return self.stages["embed"]  # type: ignore[return-value]

    def prepare(self) -> "Recognizer":
        """Warm up every stage (first-call latency), returns self."""
        for stage in self.stages.values():
            stage.prepare()
        return self

    def _run(self, bgr: np.ndarray, faces: Sequence[Face], timings: dict[str, float] | None = None,
             until: str | None = None) -> FaceBatch:
        """Run the face stages (up to and including ``until``) on ``faces`` of the validated BGR ``bgr``."""
        batch = FaceBatch(bgr, list(faces), timings)
        for name, stage in self._face_stages.items():
            stage.process(batch)
            if name == until:
                break
        return batch

    def _detect(self, bgr: np.ndarray, timings: dict[str, float] | None = None) -> list[Face]:
        with timed(timings, "detect"):
            return [f for f in self.detector.detect(bgr) if f.score >= self.min_det_score]

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 frame (validated), best score first, below ``min_det_score`` dropped."""
        return self._detect(as_bgr(frame))

    def occlusion(self, frame: np.ndarray, faces: Sequence[Face]) -> list[float | None]:
        """Per-face occlusion probability from the bundle's segment stage (``None`` each without one).

        The segmenter sees its crop of each face (the 112x112 ArcFace crop, :data:`sdk.align.ARCFACE_CROP`).
        """
        if self.segmenter is None:
            return [None] * len(faces)
        return self._run(as_bgr(frame), faces, until="segment").occlusion

    def embed_faces(self, frame: np.ndarray, faces: Sequence[Face], *,
                    timings: dict[str, float] | None = None, occlusion: list | None = None) -> np.ndarray:
        """``(N, template_dim)`` float32 unit-norm gallery templates for ``faces`` of ``frame``, after the same face
        stages as :meth:`identify` (with a complete stage, occluded faces are completed first): the embeddings
        (``template_dim == embedder.dim``), or with ``match.mask_aware`` the full and upper-face views side by side
        (``2 * dim``, :func:`sdk.views.templates`).

        Args:
            timings: a dict to add per-stage seconds to (keys from :data:`STAGE_NAMES`).
            occlusion: a list to append each face's occlusion probability to (``None`` each without a segment
                stage; see :meth:`is_occluded`), from the same pass -- :meth:`occlusion` would run the stages again.
        """
        batch = self._run(as_bgr(frame), faces, timings)
        if occlusion is not None:
            occlusion.extend(batch.occlusion)
        return self._templates(batch, np.ones(len(batch.faces), bool))

    def _templates(self, batch: FaceBatch, upper_for: np.ndarray) -> np.ndarray:
        """Templates of the faces of ``batch`` (after the embed stage); with mask-aware matching the upper view is
        embedded for the faces flagged in ``upper_for`` only (zeros elsewhere: a clean probe's query ignores it)."""
        full = batch.embeddings
        if self.mask_aware is None:
            return full
        upper = np.zeros_like(full)
        idx = np.flatnonzero(np.asarray(upper_for, bool))
        if len(idx) and (batch.chips is None or batch.chip_matrices is None):
            raise BundleError(f"bundle {self.bundle.name}: its embed stage did not keep its crops (FaceBatch.chips), "
                              "which mask-aware matching needs")
        if len(idx):
            with batch.timed("embed"):
                lms = np.stack([views.chip_landmarks(batch.faces[i].landmarks, batch.chip_matrices[i]) for i in idx])
                upper[idx] = self.embedder.embed_crops(views.upper_view(batch.chips[idx], lms, self.mask_aware))
        return views.templates(full, upper)

    def _queries(self, templates: np.ndarray, occluded: np.ndarray) -> np.ndarray:
        """Gallery search vectors for probe templates (:func:`sdk.views.queries`; the templates themselves without
        mask-aware matching)."""
        if self.mask_aware is None:
            return templates
        return views.queries(templates, occluded, self.mask_aware)

    # -- public API ---------------------------------------------------------------------------------------
    def identify(self, frame: np.ndarray, *, timings: dict[str, float] | None = None) -> list[Match]:
        """Detect, [segment, complete,] embed and match every face in ``frame``.

        Args:
            frame: uint8 ``(H, W, 3)`` BGR (OpenCV order); grey ``(H, W)`` and BGRA are converted.
            timings: a dict to fill with seconds per stage (keys from :data:`STAGE_NAMES`), e.g. for benchmarks;
                it is the caller's, so concurrent calls each get their own.

        Returns:
            One :class:`Match` per face, best detection first; ``identity`` is ``None`` for faces whose
            best similarity is below the threshold. A frame with no face returns ``[]``.
        """
        bgr = as_bgr(frame)
        return self._identify_faces(bgr, self._detect(bgr, timings), timings)

    def identify_faces(self, frame: np.ndarray, faces: Sequence[Face], *,
                       timings: dict[str, float] | None = None) -> list[Match]:
        """Like :meth:`identify` for faces found elsewhere (a tracker, another detector): no detection.

        Args:
            frame: uint8 ``(H, W, 3)`` BGR; ``faces``: boxes and 5 landmarks in that frame's pixels.
            timings: as for :meth:`identify` (no ``"detect"`` entry).
        Returns:
            One :class:`Match` per face, in the order given.
        Raises:
            TypeError: ``faces`` is not a sequence of :class:`Face`.
            ValueError: a face's box or landmarks have the wrong shape or hold NaN/infinity.
        """
        bgr = as_bgr(frame)
        return self._identify_faces(bgr, check_faces(faces, bgr.shape), timings)

    def _identify_faces(self, bgr: np.ndarray, faces: list[Face], timings: dict[str, float] | None) -> list[Match]:
        batch = self._run(bgr, faces, timings)
        occluded = np.array([self.is_occluded(o) for o in batch.occlusion], bool)
        if faces:
            q = self._queries(self._templates(batch, occluded), occluded)
        with batch.timed("match"):
            hits = self.gallery.search(q, self.config.top_k) if faces else []
        matches = []
        for face, face_hits, face_occ, occ, done in zip(faces, hits, batch.occlusion, occluded, batch.completed):
            best = face_hits[0] if face_hits else None
            sim = best.similarity if best else float("nan")
            op, thr = self.operating_point(bool(occ))
            ident = best.name if best is not None and sim >= thr else None
            matches.append(Match(face.box, face.landmarks, face.score, face_occ, ident, sim,
                                 [(h.name, h.similarity) for h in face_hits], completed=bool(done),
                                 operating_point=op, threshold=thr))
        return matches

    def is_occluded(self, occlusion: float | None) -> bool:
        """Whether a face with segmenter probability ``occlusion`` counts as occluded (at the segment stage's
        threshold; ``None``, a bundle without a segmenter, counts as clean)."""
        seg = self._face_stages.get("segment")
        return occlusion is not None and seg is not None and float(occlusion) >= float(getattr(seg, "threshold", 0.5))

    def operating_point(self, probe_occluded: bool, reference_occluded: bool = False) -> tuple[str, float]:
        """``(state name, cosine threshold)`` for comparing a probe with a reference (an enrolled template:
        enrolment photos are taken to be clean). ``state`` is ``"config"`` when ``RecognizerConfig.threshold``
        overrides the bundle's operating points."""
        if self.config.threshold is not None:
            return "config", float(self.config.threshold)
        state = self.operating_points.state(probe_occluded, reference_occluded)
        return state, self.operating_points.threshold(state)

    def embed_largest(self, image: ImageLike, *, what: str = "image") -> np.ndarray:
        """``(template_dim,)`` gallery template of the largest face in ``image`` (a frame or a file path), after
        the same face stages as :meth:`identify` (see :meth:`embed_faces`).

        Raises:
            NoFaceError: no face was found (the message names ``what``).
        """
        return self._embed_largest(image, what)[0]

    def _embed_largest(self, image: ImageLike, what: str) -> tuple[np.ndarray, float | None]:
        frame = read_image(image) if isinstance(image, (str, Path)) else as_bgr(image, name=what)
        faces = self._detect(frame)
        if not faces:
            raise NoFaceError(f"{what}: no face found")
        largest = max(faces, key=lambda f: f.width * f.height)
        batch = self._run(frame, [largest])
        return self._templates(batch, np.ones(1, bool))[0], batch.occlusion[0]

    def enroll(self, name: str, images: ImageLike | Sequence[ImageLike]) -> int:
        """Add ``name`` to the gallery from one or more images (frames or file paths), largest face of each.

        All images are processed before anything is written: if any image is unreadable or has no face,
        :class:`NoFaceError` (or the frame's ``TypeError``/``ValueError``, or ``FileNotFoundError``) is raised
        and the gallery is unchanged. Returns the number of embeddings added.
        """
        check_name(name)  # before any work: a bad name is refused at once
        if isinstance(images, (np.ndarray, str, Path)):
            images = [images]
        images = list(images)
        if not images:
            raise GalleryError(f"enroll {name!r}: no images given")
        embs, sources = [], []
        for i, img in enumerate(images):
            what = f"enroll {name!r}: image {i}" + (f" ({img})" if isinstance(img, (str, Path)) else "")
            try:
                emb, occ = self._embed_largest(img, what)
                embs.append(emb)
                if self.is_occluded(occ):
                    log.warning("%s: the face is occluded (p=%.2f); templates are matched as clean faces, so an "
                                "unmasked enrolment photo gives better and safer matches", what, occ)
            except (FileNotFoundError, ValueError, TypeError) as e:
                if isinstance(e, (NoFaceError, GalleryError)):
                    raise
                raise type(e)(f"{what}: {e}") from None
            sources.append(str(img) if isinstance(img, (str, Path)) else f"array#{i}")
        return self.gallery.add(name, np.stack(embs), sources)

    def verify(self, a: ImageLike, b: ImageLike) -> Verification:
        """Are the largest faces of ``a`` and ``b`` the same person? (cosine similarity vs the threshold of the
        pair's occlusion state, see :attr:`operating_points`).

        Raises:
            NoFaceError: ``a`` or ``b`` has no face (the message says which).
        """
        (ea, oa), (eb, ob) = self._embed_largest(a, "image a"), self._embed_largest(b, "image b")
        occ_a, occ_b = self.is_occluded(oa), self.is_occluded(ob)
        if self.mask_aware is None:
            sim = float(np.dot(ea, eb))
        else:
            sim = float(views.pair_scores(ea[None], eb[None], [occ_a], [occ_b], self.mask_aware)[0])
        op, thr = self.operating_point(occ_a, occ_b)
        return Verification(sim, sim >= thr, thr, op)

    def close(self) -> None:
        """Close the gallery file."""
        self.gallery.close()

    def __enter__(self) -> "Recognizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# engine -> the manifest file role that holds its model
_ENGINE_ROLES = {"onnxruntime": "model", "torch": "torch", "tensorrt": "tensorrt"}


def _face_run_options(bundle: Bundle, config: RecognizerConfig) -> dict[str, dict]:
    """Per face stage, the run options the config sets: the forced engine (when the stage has its file; stages
    without keep ONNX Runtime, with a warning), the device, precision and CUDA graphs.

    Raises:
        BundleError: ``backend`` forces an engine no stage of the bundle has a file for.
    """
    forced = config.backend if config.backend != "auto" else None
    specs = {n: s for n, s in bundle.stages.items() if n in FACE_STAGES and s is not None}
    if forced is not None and not any(_ENGINE_ROLES[forced] in s.files for s in specs.values()):
        from sdk.backends.select import EXPORT_HINT

        raise BundleError(f"bundle {bundle.name}: backend={config.backend!r}, but no stage has a {forced} model file; "
                          f"add them with: {EXPORT_HINT[forced]}, or use backend='auto'")
    out: dict[str, dict] = {}
    for name, spec in specs.items():
        opts: dict = {}
        engine = bundle.engines.get(name) or forced
        if engine is not None and _ENGINE_ROLES[engine] in spec.files:
            opts["engine"] = engine
        elif engine is not None:
            log.warning("bundle %s: stage %r has no %s model file; it runs on the engine 'auto' picks", bundle.name,
                        name, engine)
        if config.device != "auto":
            opts["device"] = config.device
        if config.precision != "auto":
            opts["precision"] = config.precision
        if config.cuda_graphs:
            opts["cuda_graphs"] = True
        out[name] = opts
    return out


def _detect_run_options(config: RecognizerConfig) -> dict:
    """The detector's ONNX Runtime providers for ``config.device``: CUDA's when the device is CUDA and this onnxruntime
    has that provider (the detector's graphs are ONNX only), else none (the CPU)."""
    if config.device == "cpu":
        return {}
    from sdk.backends.select import cuda_visible, ort_cuda_providers

    if config.device == "auto" and not cuda_visible():
        return {}
    cuda = ort_cuda_providers()
    return {"providers": cuda} if cuda else {}

"""Registry of stage implementations: ``(stage, kind) -> builder(spec, options) -> stage object``.

A bundle manifest names a ``kind`` per stage; :func:`build_stage` finds the builder registered for it.
New model families register here (one small builder each) without touching the Recognizer.
"""
from __future__ import annotations

from typing import Any, Callable

from sdk.bundle import StageSpec
from sdk.errors import BundleError

Builder = Callable[[StageSpec, dict[str, Any]], Any]
_BUILDERS: dict[tuple[str, str], Builder] = {}


def register(stage: str, kind: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn`` as the builder of ``kind`` for ``stage``."""

    def deco(fn: Builder) -> Builder:
        _BUILDERS[(stage, kind)] = fn
        return fn

    return deco


def kinds(stage: str) -> list[str]:
    """Registered kinds for ``stage``."""
    return sorted(k for s, k in _BUILDERS if s == stage)


def build_stage(spec: StageSpec, options: dict[str, Any] | None = None) -> Any:
    """Instantiate the stage described by ``spec``; ``options`` override ``spec.config`` values."""
    fn = _BUILDERS.get((spec.name, spec.kind))
    if fn is None:
        raise BundleError(f"stage {spec.name!r}: unknown kind {spec.kind!r}; this SDK knows {kinds(spec.name)}")
    return fn(spec, dict(options or {}))


def _need(spec: StageSpec, *roles: str) -> list[Any]:
    missing = [r for r in roles if r not in spec.files]
    if missing:
        raise BundleError(f"stage {spec.name!r} ({spec.kind}) needs files {missing}")
    return [spec.files[r].path for r in roles]


@register("detect", "mtcnn")
def _build_mtcnn(spec: StageSpec, options: dict[str, Any]) -> Any:
    from dataclasses import fields

    from sdk.detect import DetectorConfig, MTCNNDetector

    known = {f.name for f in fields(DetectorConfig)}
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in {**spec.config, **options}.items() if k in known}
    pnet, rnet, onet = _need(spec, "pnet", "rnet", "onet")
    return MTCNNDetector(pnet, rnet, onet, DetectorConfig(**cfg))


@register("embed", "dlib_resnet")
def _build_dlib(spec: StageSpec, options: dict[str, Any]) -> Any:
    from sdk.embed import DlibConfig, DlibResNetEmbedder

    cfg = {**spec.config, **options}
    (model,) = _need(spec, "model")
    sp = spec.files["shape_predictor"].path if "shape_predictor" in spec.files else None
    return DlibResNetEmbedder(model, sp, DlibConfig(chip_landmarks=cfg.get("chip_landmarks", "dlib5"),
                                                    jitters=int(cfg.get("jitters", 0))))


@register("embed", "dlib_resnet_onnx")
def _build_dlib_onnx(spec: StageSpec, options: dict[str, Any]) -> Any:
    """dlib's ResNet rebuilt from its ``.dat`` as an ONNX graph (same chips and model_id as ``dlib_resnet``).

    Files: ``model`` (the ``.dat``), ``shape_predictor`` (for ``chip_landmarks: "dlib5"``).  Config:
    ``chip_landmarks`` (``"dlib5"`` | ``"mtcnn5"``), ``threads`` (ONNX Runtime intra-op threads, 0 = default).
    Options may also pass ``providers`` (ONNX Runtime execution providers) and ``batch_size``.
    """
    from sdk.embed import DlibConfig
    from sdk.embed_onnx import DlibOnnxEmbedder

    cfg = {**spec.config, **options}
    if int(cfg.get("jitters", 0) or 0):
        raise BundleError(f"stage {spec.name!r} ({spec.kind}): jitters are not supported, use kind 'dlib_resnet'")
    (model,) = _need(spec, "model")
    sp = spec.files["shape_predictor"].path if "shape_predictor" in spec.files else None
    extra = {k: cfg[k] for k in ("providers", "batch_size") if k in cfg}
    return DlibOnnxEmbedder(model, sp, DlibConfig(chip_landmarks=cfg.get("chip_landmarks", "dlib5")),
                            threads=int(cfg.get("threads", 0)), **extra)


@register("segment", "onnx_segmenter")
def _build_onnx_segmenter(spec: StageSpec, options: dict[str, Any]) -> Any:
    """Occlusion segmenter on the 112x112 ArcFace crop (``export/onnx_segmenter.py``), run by ONNX Runtime.

    Files: ``model`` (the ``.onnx``).  Config: ``threshold`` (0.5), ``crop`` (``"arcface112"``), ``threads``
    (ORT intra-op threads, 1).  Options may also pass ``providers`` and ``batch_size``.
    """
    from sdk.segment import OnnxSegmenter

    cfg = {**spec.config, **options}
    (model,) = _need(spec, "model")
    extra = {k: cfg[k] for k in ("providers", "batch_size") if k in cfg}
    return OnnxSegmenter(model, threshold=float(cfg.get("threshold", 0.5)), crop=str(cfg.get("crop", "arcface112")),
                         threads=int(cfg.get("threads", 1)), **extra)


@register("complete", "onnx_inpainter")
def _build_onnx_inpainter(spec: StageSpec, options: dict[str, Any]) -> Any:
    """Face inpainter on the 112x112 ArcFace BGR crop (``export/onnx_inpainter.py``), run by ONNX Runtime.

    Files: ``model`` (the ``.onnx``).  Config: ``crop`` (``"arcface112"``), ``input`` (must be ``"bgr"``),
    ``threads`` (ORT intra-op threads, 1), ``min_occlusion`` (faces with an occlusion probability at least this
    are completed, 0.5), ``dilate`` (pixels the segmenter's mask is grown by, 1).  Options may also pass
    ``providers`` and ``batch_size``.
    """
    from sdk.complete import OnnxInpainter

    cfg = {**spec.config, **options}
    if cfg.get("input", "bgr") != "bgr":
        raise BundleError(f"stage {spec.name!r} ({spec.kind}): input {cfg.get('input')!r} is not supported "
                          "(only 'bgr': the inpainter is trained on BGR crops)")
    (model,) = _need(spec, "model")
    extra = {k: cfg[k] for k in ("providers", "batch_size") if k in cfg}
    return OnnxInpainter(model, crop=str(cfg.get("crop", "arcface112")), threads=int(cfg.get("threads", 1)),
                         min_occlusion=float(cfg.get("min_occlusion", 0.5)), dilate=int(cfg.get("dilate", 1)),
                         **extra)


@register("embed", "onnx_embedder")
def _build_onnx_embedder(spec: StageSpec, options: dict[str, Any]) -> Any:
    """A generic exported embedder (``export/onnx_embedder.py``) on ONNX Runtime: :class:`sdk.embed_generic.OnnxEmbedder`.

    Files: ``model`` (the ``.onnx``: uint8 NHWC RGB crops -> raw descriptors), ``shape_predictor`` (for
    ``crop: "dlib150"`` with ``chip_landmarks: "dlib5"``).  Config: ``crop`` (``"dlib150"`` | ``"arcface112"``),
    ``chip_landmarks``, ``input`` (must be ``"uint8_nhwc_rgb"``), ``dim``, ``threads``.  Options may also pass
    ``providers`` and ``batch_size``.
    """
    from sdk.embed_generic import OnnxEmbedder

    cfg = {**spec.config, **options}
    if cfg.get("input", "uint8_nhwc_rgb") != "uint8_nhwc_rgb":
        raise BundleError(f"stage {spec.name!r} ({spec.kind}): input {cfg.get('input')!r} is not supported "
                          "(only 'uint8_nhwc_rgb')")
    (model,) = _need(spec, "model")
    sp = spec.files["shape_predictor"].path if "shape_predictor" in spec.files else None
    extra = {k: cfg[k] for k in ("providers", "batch_size") if k in cfg}
    return OnnxEmbedder(model, sp, crop=str(cfg.get("crop", "dlib150")),
                        chip_landmarks=str(cfg.get("chip_landmarks", "dlib5")), dim=int(cfg.get("dim", 128)),
                        threads=int(cfg.get("threads", 0)), **extra)


def _dataclass_cfg(cls: type, spec: StageSpec, options: dict[str, Any]) -> Any:
    """``cls(**known fields of spec.config + options)`` (lists become tuples)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    raw = {**spec.config, **options}
    try:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise BundleError(f"stage {spec.name!r} ({spec.kind}): bad config: {e}") from None


@register("detect", "ltdet")
def _build_ltdet(spec: StageSpec, options: dict[str, Any]) -> Any:
    """LookThrough's single-shot masked-face detector (``export/onnx_detector.py``): :class:`sdk.detect_onnx.LTDetDetector`.

    Files: ``model`` (the ``.onnx``).  Config: :class:`sdk.detect_onnx.LTDetConfig` fields (``score_threshold``,
    ``nms_iou``, ``pyramid``, ``max_side``, ``min_face_size``, ``threads``).  The stage's ``preprocess`` record, when
    present, must be the LTDet one (frame, rgb, float32, nchw).  Options may pass ``providers``.
    """
    from sdk.detect_onnx import LTDetConfig, LTDetDetector
    from sdk.preprocess import Preprocess

    (model,) = _need(spec, "model")
    pre = getattr(spec, "preprocess", None)
    if isinstance(pre, dict):
        pre = Preprocess.from_dict(pre, where=f"stage {spec.name!r} preprocess")
    extra = {"providers": options.pop("providers")} if "providers" in options else {}
    return LTDetDetector(model, _dataclass_cfg(LTDetConfig, spec, options), preprocess=pre, **extra)


@register("detect", "scrfd")
def _build_scrfd(spec: StageSpec, options: dict[str, Any]) -> Any:
    """An insightface SCRFD ``.onnx`` (e.g. ``det_10g.onnx``) with insightface's conventions:
    :class:`sdk.detect_onnx.SCRFDDetector`.  Files: ``model``.  Config: ``score_threshold`` (0.5), ``nms_iou``
    (0.4), ``input_size`` (640, for graphs with a dynamic input), ``threads``.  Options may pass ``providers``."""
    from sdk.detect_onnx import SCRFDConfig, SCRFDDetector

    (model,) = _need(spec, "model")
    extra = {"providers": options.pop("providers")} if "providers" in options else {}
    return SCRFDDetector(model, _dataclass_cfg(SCRFDConfig, spec, options), **extra)


@register("embed", "arcface_onnx")
def _build_arcface_onnx(spec: StageSpec, options: dict[str, Any]) -> Any:
    """An insightface ArcFace recogniser ``.onnx`` (e.g. ``w600k_r50.onnx``): 112x112 ArcFace crops, NCHW RGB
    ``(x - 127.5) / 127.5`` -> L2-normalised embedding (:class:`sdk.embed_arcface.ArcFaceOnnxEmbedder`).
    Files: ``model``.  Config: ``dim`` (0 = the graph's), ``threads``.  Options may pass ``providers`` and
    ``batch_size``."""
    from sdk.embed_arcface import ArcFaceOnnxEmbedder

    cfg = {**spec.config, **options}
    (model,) = _need(spec, "model")
    extra = {k: cfg[k] for k in ("providers", "batch_size") if k in cfg}
    return ArcFaceOnnxEmbedder(model, dim=int(cfg.get("dim", 0)), threads=int(cfg.get("threads", 0)), **extra)

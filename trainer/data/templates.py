"""Real mask templates: RGBA PNGs with six fitting anchors (MaskTheFace layout), loaded once and cached.

A templates folder holds ``anchors.cfg`` (INI: one section per template with ``template: file.png`` and
``mask_a`` .. ``mask_f: x, y`` in template pixels; ``;`` and ``#`` start comments) and the PNGs. Anchor
meaning: a top-left, b top middle (nose bridge), c top-right, d bottom-left, e chin (bottom middle),
f bottom-right; "left" is image-left.

Sections named ``<family>``, ``<family>_left`` and ``<family>_right`` are the front, left- and right-turned
views of one mask. ``_left`` is the view for a face whose nose points to the image-left (its anchor b sits
near the template's left edge). A family that lacks a side view gets one by mirroring the other side view
(or, failing that, uses the front view).

Images are read with OpenCV, so colours are **BGR(A)**; everything in ``trainer.data`` works on BGR
images. The data is never copied: pass the folder at run time (``SynthesisConfig.templates_dir``).
"""
from __future__ import annotations

import configparser
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ANCHOR_KEYS = ("a", "b", "c", "d", "e", "f")
VIEWS = ("front", "left", "right")

#: Families whose printed artwork (logo/text) makes them "complex" in the De-Occlusion Distillation sense;
#: all other families are plain ("simple").
COMPLEX_FAMILIES = frozenset({"N95"})


@dataclass(frozen=True, eq=False)
class MaskTemplate:
    """One template view.

    Attributes:
        name: section name in ``anchors.cfg`` (e.g. ``"surgical_blue_left"``; a mirrored view gets the
            name of the view it stands in for).
        family: the mask without view suffix (``"surgical_blue"``).
        view: ``"front"``, ``"left"`` or ``"right"``.
        anchors: (6, 2) float64, anchors a..f in level-0 template pixels (x, y).
        levels: image pyramid of the **premultiplied** BGRA template, uint8 (h_l, w_l, 4); level ``l`` is
            ``2**l`` times smaller than level 0 (``cv2.pyrDown``), so level-0 pixel ``p`` is ``p / 2**l``.
        mirrored: True if this view was made by flipping the opposite side view.
    """

    name: str
    family: str
    view: str
    anchors: np.ndarray
    levels: tuple[np.ndarray, ...]
    mirrored: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        h, w = self.levels[0].shape[:2]
        return w, h

    def level_for_scale(self, scale: float) -> int:
        """Pyramid level to sample for a template->image scale factor ``scale`` (image px per template px):
        the finest level that is at most 2x larger than the destination (bilinear sampling stays clean)."""
        if scale <= 0:
            return 0
        lvl = int(np.floor(np.log2(1.0 / scale))) if scale < 0.5 else 0
        return int(np.clip(lvl, 0, len(self.levels) - 1))


def _premultiply(bgra: np.ndarray) -> np.ndarray:
    a = bgra[..., 3:4].astype(np.uint16)
    out = bgra.copy()
    out[..., :3] = ((bgra[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)
    return out


def _pyramid(img: np.ndarray, min_side: int = 16) -> tuple[np.ndarray, ...]:
    levels = [np.ascontiguousarray(img)]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        levels.append(cv2.pyrDown(levels[-1]))
    return tuple(levels)


def _mirror(t: MaskTemplate, view: str, name: str) -> MaskTemplate:
    w = t.size[0]
    anc = t.anchors.copy()
    anc[:, 0] = (w - 1) - anc[:, 0]
    anc = anc[[2, 1, 0, 5, 4, 3]]  # a<->c, d<->f after the flip
    levels = tuple(np.ascontiguousarray(lv[:, ::-1]) for lv in t.levels)
    return MaskTemplate(name, t.family, view, anc, levels, mirrored=True)


def _split_view(section: str) -> tuple[str, str]:
    for view in ("left", "right"):
        if section.endswith("_" + view):
            return section[: -len(view) - 1], view
    return section, "front"


def _parse_point(text: str) -> tuple[float, float]:
    x, y = (float(v) for v in text.replace("(", "").replace(")", "").split(","))
    return x, y


def _load(folder: Path) -> dict[str, dict[str, MaskTemplate]]:
    cfg_path = folder / "anchors.cfg"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no anchors.cfg in templates folder {folder}")
    cp = configparser.ConfigParser(comment_prefixes=("#", ";"), inline_comment_prefixes=None, strict=False)
    cp.read(cfg_path)
    by_family: dict[str, dict[str, MaskTemplate]] = {}
    for section in cp.sections():
        sec = cp[section]
        if "template" not in sec:
            continue
        rel = Path(sec["template"].strip())
        path = folder / rel if (folder / rel).is_file() else folder / rel.name
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] != 4:
            raise ValueError(f"template {path} is missing or not an RGBA image")
        anchors = np.array([_parse_point(sec[f"mask_{k}"]) for k in ANCHOR_KEYS], np.float64)
        family, view = _split_view(section)
        by_family.setdefault(family, {})[view] = MaskTemplate(section, family, view, anchors,
                                                              _pyramid(_premultiply(img)))
    for family, views in by_family.items():
        for view, other in (("left", "right"), ("right", "left")):
            if view not in views and other in views:
                views[view] = _mirror(views[other], view, f"{family}_{view}")
    if not by_family:
        raise ValueError(f"{cfg_path} defines no templates")
    return by_family


_CACHE: dict[Path, dict[str, dict[str, MaskTemplate]]] = {}
_LOCK = threading.Lock()


def load_templates(folder: str | Path) -> dict[str, dict[str, MaskTemplate]]:
    """Templates of ``folder`` as ``{family: {view: MaskTemplate}}``, read once per process and cached.

    Raises:
        FileNotFoundError: no ``anchors.cfg`` in ``folder``.
        ValueError: a listed PNG is missing or has no alpha channel.
    """
    key = Path(folder).expanduser().resolve()
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(key)
        return _CACHE[key]


def family_category(family: str) -> str:
    """``"complex"`` for printed masks (N95 with its logo/warning text), else ``"simple"``."""
    return "complex" if family in COMPLEX_FAMILIES else "simple"


def pick_view(views: dict[str, MaskTemplate], yaw_deg: float, side_view_deg: float) -> MaskTemplate:
    """The view for a face with yaw ``yaw_deg`` (positive: nose towards the image-right): ``right`` when
    ``yaw_deg > side_view_deg``, ``left`` when ``yaw_deg < -side_view_deg``, else ``front`` (falling back to
    whatever view exists)."""
    want = "right" if yaw_deg > side_view_deg else "left" if yaw_deg < -side_view_deg else "front"
    for view in (want, "front", "left", "right"):
        if view in views:
            return views[view]
    raise KeyError("empty template family")

"""Split the real masked / unmasked photos into a *harvest* part and a held-out *validation* part, by duplicate group.

The photos of ``chandrikadeb7/Face-Mask-Detection`` (``dataset/with_mask``, ``dataset/without_mask``; extracted by
``tools/get_extra_data.py``) include augmented copies of the same photo (``0_0_0 copy 12.jpg``), byte-identical
duplicates and re-encoded near-duplicates. A random split by file would put copies of one photo on both sides, so
files are first grouped (union-find) by

* name stem: the name with a trailing `` copy`` / `` copy N`` removed (``"0_0_0 copy 12.jpg" -> "0_0_0"``),
* identical bytes (SHA-1),
* a 64-bit difference hash (9x8 grey dHash) within Hamming distance ``dhash_bits`` (default 4),

and each group goes wholly to one part: ``validation`` when ``int(sha1(salt + min SHA-1 of the group)) % 1000 <
1000 * validation_fraction``, else ``harvest``. Deterministic, no RNG, independent of the machine.

The split file (committed: ``trainer/data/splits/face_mask_detection.json``) lists every file with its folder, name,
SHA-1, group and part -- names and hashes only, no pixels. ``harvest`` photos may be used for training (cut into
occluders); ``validation`` photos are never used for training: only evaluation reads them (detector recall,
segmenter presence, and the evaluation-only ``real_val`` cutouts).

    python tools/split_real_masks.py --data /work/shared-extra/face_mask_detection/dataset \
        --out trainer/data/splits/face_mask_detection.json
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

FOLDERS = ("with_mask", "without_mask")
PARTS = ("harvest", "validation")
RULE = ("groups: union of same name stem (' copy N' removed), same SHA-1, dHash within dhash_bits; group -> "
        "validation iff int(sha1(salt + min SHA-1 of the group), 16) % 1000 < 1000 * validation_fraction")
DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "face_mask_detection.json"
_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class SplitEntry:
    """One photo: ``folder`` (with_mask / without_mask), file ``name``, ``sha1`` of its bytes, duplicate ``group``
    id and ``part`` (harvest / validation)."""

    folder: str
    name: str
    sha1: str
    group: int
    part: str


def name_stem(name: str) -> str:
    """The name with augmentation / copy suffixes removed: ``"0_0_0 copy 12.jpg" -> "0_0_0"``."""
    stem = Path(name).stem.lower()
    return re.sub(r"(\s*copy(\s*\d+)?)+$", "", stem).strip()


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of a BGR or grey image (9x8 grey thumbnail, left > right comparisons)."""
    g = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    t = cv2.resize(g, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (t[:, :-1] > t[:, 1:]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


class _UnionFind:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, a: int) -> int:
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def group_files(names: list[str], sha1s: list[str], hashes: list[int | None], dhash_bits: int = 4) -> list[int]:
    """Duplicate-group id (0..G-1, in order of first appearance) of each file (see module doc)."""
    n = len(names)
    uf = _UnionFind(n)
    first: dict[tuple[str, str], int] = {}
    for i, (nm, sh) in enumerate(zip(names, sha1s)):
        for key in (("stem", name_stem(nm)), ("sha", sh)):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    idx = [i for i, h in enumerate(hashes) if h is not None]
    if idx:
        hs = np.array([hashes[i] for i in idx], dtype=np.uint64)
        for a in range(len(idx)):
            x = np.bitwise_xor(hs[a], hs[a + 1:])
            dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1) if len(x) else np.array([])
            for b in np.nonzero(dist <= dhash_bits)[0]:
                uf.union(idx[a], idx[a + 1 + int(b)])
    roots: dict[int, int] = {}
    return [roots.setdefault(uf.find(i), len(roots)) for i in range(n)]


def build_split(root: str | Path, validation_fraction: float = 0.3, salt: str = "lookthrough-realmask-v1",
                dhash_bits: int = 4) -> dict:
    """Scan ``root/with_mask`` and ``root/without_mask`` and return the split document (see module doc).

    Raises FileNotFoundError when neither folder exists, ValueError for a fraction outside (0, 1).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    root = Path(root)
    files = [(f, p) for f in FOLDERS if (root / f).is_dir()
             for p in sorted((root / f).iterdir()) if p.suffix.lower() in _SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no photos under {root}/{{{','.join(FOLDERS)}}}")
    names = [f"{f}/{p.name}" for f, p in files]
    sha1s, hashes, unreadable = [], [], 0
    for _, p in files:
        data = p.read_bytes()
        sha1s.append(hashlib.sha1(data).hexdigest())
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        hashes.append(dhash(img) if img is not None else None)
        unreadable += img is None
    groups = group_files([p.name for _, p in files], sha1s, hashes, dhash_bits)
    key: dict[int, str] = {}
    for g, sh in zip(groups, sha1s):
        key[g] = min(key.get(g, sh), sh)
    cut = int(round(1000 * validation_fraction))
    part = {g: ("validation" if int(hashlib.sha1((salt + k).encode()).hexdigest(), 16) % 1000 < cut else "harvest")
            for g, k in key.items()}
    entries = [SplitEntry(f, p.name, sh, g, part[g]) for (f, p), sh, g in zip(files, sha1s, groups)]
    counts = {f"{f}/{pt}": sum(1 for e in entries if e.folder == f and e.part == pt) for f in FOLDERS for pt in PARTS}
    return {"source": "chandrikadeb7/Face-Mask-Detection@7e500749401b dataset/", "rule": RULE,
            "validation_fraction": validation_fraction, "salt": salt, "dhash_bits": dhash_bits,
            "groups": len(key), "unreadable": unreadable, "counts": counts,
            "files": [asdict(e) for e in entries]}


def save_split(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in doc.items() if k != "files"}
    lines = ",\n".join(json.dumps(e, separators=(",", ":")) for e in doc["files"])
    path.write_text(json.dumps(head, indent=1)[:-2] + ',\n "files": [\n' + lines + "\n ]\n}\n")
    return path


def load_split(path: str | Path = DEFAULT_SPLIT) -> list[SplitEntry]:
    """Entries of a split file. Raises FileNotFoundError / ValueError (malformed)."""
    doc = json.loads(Path(path).read_text())
    try:
        return [SplitEntry(**e) for e in doc["files"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a real-mask split file: {e}") from e


def split_files(root: str | Path, part: str, folder: str, split: str | Path = DEFAULT_SPLIT,
                verify: bool = True) -> list[tuple[Path, str]]:
    """``[(path, sha1)]`` of the photos of ``folder`` in ``part`` under ``root``.

    With ``verify``, each file's SHA-1 is checked against the split file (a changed file raises ValueError naming
    it: a different extraction would silently move photos between parts). Missing files are skipped.
    """
    if part not in PARTS or folder not in FOLDERS:
        raise ValueError(f"part must be in {PARTS} and folder in {FOLDERS}")
    out = []
    for e in load_split(split):
        if e.part != part or e.folder != folder:
            continue
        p = Path(root) / e.folder / e.name
        if not p.is_file():
            continue
        if verify and hashlib.sha1(p.read_bytes()).hexdigest() != e.sha1:
            raise ValueError(f"{p}: SHA-1 differs from the split file {split} (a different extraction?)")
        out.append((p, e.sha1))
    return out


def read_photo(path: str | Path, side: int = 640) -> np.ndarray | None:
    """A real photo as the detector checks and evaluations see it: uint8 BGR, downscaled (area) so its longer side is
    at most ``side`` px; None when it is unreadable or under 24 px on a side."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or min(img.shape[:2]) < 24:
        return None
    if max(img.shape[:2]) > side:
        f = side / max(img.shape[:2])
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    return img

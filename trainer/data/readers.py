"""Readers for real face data: folder-per-identity trees, LFW ``pairs.txt``, identity-disjoint splits.

Nothing is copied: readers return paths into the data folder given at run time (``../shared/data``).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One image of one identity."""

    path: Path
    identity: str


@dataclass(frozen=True)
class Pair:
    """One verification pair from ``pairs.txt``: two images, same person or not, and its fold (0-based)."""

    a: Path
    b: Path
    same: bool
    fold: int


def read_identity_tree(root: str | Path, min_images: int = 1) -> list[Sample]:
    """Every image under ``root/<identity>/``, sorted by identity then file name.

    Args:
        root: folder with one sub-folder per identity (LFW, the CelebA subset).
        min_images: skip identities with fewer images.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no identity folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    out: list[Sample] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(imgs) >= min_images:
            out.extend(Sample(p, d.name) for p in imgs)
    if not out:
        raise FileNotFoundError(f"{root}: no <identity>/<image> files found")
    return out


def lfw_image_path(root: Path, name: str, number: int) -> Path:
    """``root/Name/Name_0001.jpg`` for image ``number`` (1-based) of ``name``."""
    return root / name / f"{name}_{number:04d}.jpg"


def read_lfw_pairs(pairs_txt: str | Path, root: str | Path | None = None) -> list[Pair]:
    """Parse LFW's view-2 ``pairs.txt`` (header ``folds n``; per fold ``n`` same then ``n`` different lines).

    Lines are ``name i j`` (same person) or ``name1 i name2 j`` (different); image numbers are 1-based.
    Fold k (0-based) is the k-th block of ``2n`` lines, as in the protocol.

    Raises:
        ValueError: a malformed line (its number is named).
    """
    pairs_txt = Path(pairs_txt)
    root = Path(root) if root is not None else pairs_txt.parent
    lines = [ln.split() for ln in pairs_txt.read_text().splitlines() if ln.strip()]
    try:
        folds, n = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError):
        raise ValueError(f"{pairs_txt}: first line must be '<folds> <pairs per half-fold>'") from None
    out: list[Pair] = []
    for i, parts in enumerate(lines[1:], start=2):
        fold = (i - 2) // (2 * n)
        if len(parts) == 3:
            out.append(Pair(lfw_image_path(root, parts[0], int(parts[1])), lfw_image_path(root, parts[0], int(parts[2])), True, fold))
        elif len(parts) == 4:
            out.append(Pair(lfw_image_path(root, parts[0], int(parts[1])), lfw_image_path(root, parts[2], int(parts[3])), False, fold))
        else:
            raise ValueError(f"{pairs_txt}:{i}: expected 3 or 4 fields, got {len(parts)}")
    if len(out) != folds * 2 * n:
        raise ValueError(f"{pairs_txt}: header promises {folds * 2 * n} pairs, found {len(out)}")
    return out


@dataclass(frozen=True)
class Split:
    """Identity-disjoint train / val / test identity lists."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int

    def of(self, samples: list[Sample], part: str) -> list[Sample]:
        ids = set(getattr(self, part))
        return [s for s in samples if s.identity in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        return cls(**json.loads(Path(path).read_text()))


def identity_split(samples: list[Sample], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Split identities (not images) into train/val/test by ``fractions``, reproducibly for ``seed``."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    ids = sorted({s.identity for s in samples})
    random.Random(seed).shuffle(ids)
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    return Split(sorted(ids[:n_train]), sorted(ids[n_train:n_train + n_val]), sorted(ids[n_train + n_val:]), seed)

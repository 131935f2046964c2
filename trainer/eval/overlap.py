"""Identity overlap between training faces and the LFW test pairs, by name and by teacher embedding.

Three checks (``tools/identity_overlap.py`` runs them and writes ``overlap.json`` / ``overlap.md`` / ``overlap.png``):

1. **By name** (where names exist): LFW people used for training (the face list's ``lfw-nonpair`` source) against
   the names in ``pairs.txt`` -- zero by construction, verified. CelebA subset ids and UTKFace files carry no names.
2. **Near-duplicate images**: a training image whose teacher embedding (dlib ResNet, cosine) is at least
   ``dup_threshold`` (default 0.98; distance ~0.2, tighter than any same-person pair of different photos in LFW
   usually gets) from some LFW test image.
3. **Same person** (embedding): thresholds are calibrated on the LFW test images themselves, where identities are
   known. Image level: every training image's best cosine to any test image, against the threshold at which
   different-identity *test* image pairs (all of them, ~30 M) are accepted at rate ``far`` (default 1e-6).
   Identity level (labelled sources): the cosine between an identity's mean embedding and each test identity's mean
   embedding, against the threshold at which different test identities' means collide at rate ``far``. The expected
   number of chance matches (``far`` x comparisons) is reported beside every observed count: only the excess over
   it says anything.

All embeddings are the teacher's on its own 150x150 chips (the ``baseline`` bundle).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class LfwTestSet:
    """LFW test-pair images: ``names`` (N,), unit ``emb`` (N, D), ``paths``."""

    names: np.ndarray
    emb: np.ndarray
    paths: list[str]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def max_similarity(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the best cosine to any row of ``b`` and its index (unit rows assumed)."""
    best = np.full(len(a), -np.inf, np.float32)
    arg = np.zeros(len(a), np.int64)
    for s in range(0, len(a), chunk):
        sim = a[s:s + chunk] @ b.T
        arg[s:s + chunk] = sim.argmax(1)
        best[s:s + chunk] = sim[np.arange(len(sim)), arg[s:s + chunk]]
    return best, arg


def impostor_threshold(emb: np.ndarray, labels: np.ndarray, far: float, chunk: int = 2048) -> tuple[float, int]:
    """Smallest cosine t such that at most ``far`` of all pairs of rows with *different* labels score >= t
    (``floor(far * pairs)`` of them; ties with the next one are rejected). Returns ``(t, number of impostor pairs)``;
    exact (the top of every chunk of the upper triangle is kept)."""
    n = len(emb)
    labels = np.asarray(labels)
    n_imp = int(n * (n - 1) // 2 - sum(c * (c - 1) // 2 for c in np.unique(labels, return_counts=True)[1]))
    k = int(np.floor(far * n_imp)) + 1  # keep the k + 1 highest: the threshold sits just above the (k+1)-th
    top = np.empty(0, np.float32)
    for s in range(0, n, chunk):
        sim = emb[s:s + chunk] @ emb.T
        rows = np.arange(s, min(n, s + chunk))
        valid = (labels[rows][:, None] != labels[None, :]) & (np.arange(n)[None, :] > rows[:, None])
        v = sim[valid]
        if len(v) > k:
            v = np.partition(v, len(v) - k)[-k:]
        top = np.concatenate([top, v])
        if len(top) > k:
            top = np.partition(top, len(top) - k)[-k:]
    t = float(np.nextafter(np.float32(top.min()), np.float32(np.inf))) if len(top) >= k else -1.0
    return t, n_imp


def centroids(emb: np.ndarray, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(unique labels, unit mean embedding per label)."""
    labels = np.asarray(labels)
    u, inv = np.unique(labels, return_inverse=True)
    c = np.zeros((len(u), emb.shape[1]), np.float64)
    np.add.at(c, inv, emb)
    return u, _unit(c)


def split_half_genuine(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine between the mean of the first and second half of each identity's images (identities with >= 2)."""
    out = []
    for lab in np.unique(labels):
        idx = np.nonzero(labels == lab)[0]
        if len(idx) < 2:
            continue
        h = len(idx) // 2
        a, b = _unit(emb[idx[:h]].mean(0, keepdims=True)), _unit(emb[idx[h:]].mean(0, keepdims=True))
        out.append(float((a @ b.T)[0, 0]))
    return np.array(out)


def overlap_report(test: LfwTestSet, train_emb: np.ndarray, train_ids: Sequence[str | None], train_sources: Sequence[str],
                   train_names: dict[str, set[str]], pair_names: set[str], far: float = 1e-6,
                   dup_threshold: float = 0.98) -> dict:
    """The three checks of the module doc. ``train_names``: source -> person names used for training (LFW)."""
    te, tl = _unit(test.emb), np.asarray(test.names)
    tr = _unit(train_emb)
    ids = np.array([i if i is not None else "" for i in train_ids])
    srcs = np.asarray(train_sources)
    t_img, n_imp = impostor_threshold(te, tl, far)
    cu, cc = centroids(te, tl)
    t_id, n_imp_id = impostor_threshold(cc, cu, far)
    gen = split_half_genuine(te, tl)
    best, arg = max_similarity(tr, te)
    rep: dict = {"test_images": len(te), "test_identities": len(cu), "far": far,
                 "image_threshold": t_img, "image_impostor_pairs": n_imp,
                 "identity_threshold": t_id, "identity_impostor_pairs": n_imp_id,
                 "split_half_genuine": {"n": len(gen), "median": float(np.median(gen)) if len(gen) else None,
                                        "accepted_at_identity_threshold": float(np.mean(gen >= t_id)) if len(gen) else None},
                 "dup_threshold": dup_threshold, "by_name": {}, "sources": {}}
    for src, names in train_names.items():
        both = sorted(names & pair_names)
        rep["by_name"][src] = {"training_names": len(names), "in_test_pairs": len(both), "examples": both[:10]}
    for src in sorted(set(srcs.tolist())):
        sel = srcs == src
        b = best[sel]
        row = {"images": int(sel.sum()),
               "near_duplicates": int((b >= dup_threshold).sum()),
               "images_matching_a_test_image": int((b >= t_img).sum()),
               "expected_by_chance": round(far * int(sel.sum()) * len(te), 2)}
        lab = ids[sel]
        if (lab != "").any():
            u, c = centroids(tr[sel][lab != ""], lab[lab != ""])
            sim = c @ cc.T
            j = sim.argmax(1)
            s = sim[np.arange(len(u)), j]
            hits = np.nonzero(s >= t_id)[0]
            row.update({"identities": len(u), "identities_matching_a_test_identity": int(len(hits)),
                        "identity_expected_by_chance": round(far * len(u) * len(cu), 2),
                        "identity_matches": [{"train": str(u[h]), "test": str(cu[j[h]]), "cosine": round(float(s[h]), 4)}
                                             for h in hits[np.argsort(-s[hits])][:50]]})
        dup = np.nonzero(sel & (best >= dup_threshold))[0]
        row["near_duplicate_examples"] = [{"train_index": int(i), "test": test.paths[int(arg[i])],
                                           "cosine": round(float(best[i]), 4)} for i in dup[:20]]
        rep["sources"][src] = row
    rep["best_similarity_quantiles"] = {src: [float(np.quantile(best[srcs == src], q)) for q in (0.5, 0.9, 0.99, 1.0)]
                                        for src in sorted(set(srcs.tolist()))}
    return rep


def markdown(rep: dict) -> str:
    """The report as markdown tables."""
    out = ["# Identity overlap: training faces vs LFW test pairs", "",
           f"{rep['test_images']} LFW test-pair images of {rep['test_identities']} people; teacher = dlib ResNet "
           f"(cosine). Thresholds from the test set itself at FAR {rep['far']:g}: image pairs >= "
           f"{rep['image_threshold']:.4f} ({rep['image_impostor_pairs']:,} different-person pairs), identity means >= "
           f"{rep['identity_threshold']:.4f} ({rep['identity_impostor_pairs']:,} pairs; split-half genuine means "
           f"accepted: {100 * (rep['split_half_genuine']['accepted_at_identity_threshold'] or 0):.1f}%). "
           f"Near-duplicate: cosine >= {rep['dup_threshold']}.", "",
           "| source | images | near-duplicates | images matching a test image (expected by chance) | identities | "
           "identities matching a test identity (expected by chance) |", "|---|---:|---:|---:|---:|---:|"]
    for src, r in rep["sources"].items():
        out.append(f"| {src} | {r['images']} | {r['near_duplicates']} | {r['images_matching_a_test_image']} "
                   f"({r['expected_by_chance']}) | {r.get('identities', '–')} | "
                   f"{r.get('identities_matching_a_test_identity', '–')} ({r.get('identity_expected_by_chance', '–')}) |")
    out += ["", "By name: " + "; ".join(f"{s}: {v['in_test_pairs']} of {v['training_names']} names in pairs.txt"
                                         for s, v in rep["by_name"].items()) + "."]
    return "\n".join(out) + "\n"


def save(rep: dict, out: Path, best_by_source: dict[str, np.ndarray] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlap.json").write_text(json.dumps(rep, indent=1))
    (out / "overlap.md").write_text(markdown(rep))
    if best_by_source:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 4), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for src, b in best_by_source.items():
            ax.hist(b, bins=80, range=(0.6, 1.0), histtype="step", density=True, label=src)
        ax.axvline(rep["image_threshold"], color="k", ls="--", lw=1, label=f"FAR {rep['far']:g} (image)")
        ax.axvline(rep["dup_threshold"], color="r", ls=":", lw=1, label="near-duplicate")
        ax.set_xlabel("best cosine to any LFW test image (teacher)")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / "overlap.png", format="png")

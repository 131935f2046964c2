"""Validation of a student during training: held-out pair verification, clean vs masked, with the teacher baseline.

Pairs (half genuine, half impostor) among held-out identities; k-fold verification accuracy of cosine scores
(:func:`pair_accuracy`).  The teacher's baseline (its clean vs its own masked crops) is computed once per run.
"""
from __future__ import annotations

import numpy as np

from trainer.student.data import MaskedChipDataset
from trainer.student.models import student_arch, to_input
from trainer.student.teacher import OnnxTeacher

__all__ = ["val_pairs", "pair_accuracy", "embed_chips", "torch_embed", "Validator"]


def val_pairs(labels: np.ndarray, idx: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n_pairs/2`` genuine and as many impostor pairs among ``idx`` (positions into ``idx``)."""
    rng = np.random.default_rng(seed)
    lab = labels[idx]
    gen = [(a, b) for a in range(len(idx)) for b in range(len(idx)) if a != b and lab[a] == lab[b]]
    half = n_pairs // 2
    if len(gen) > half:
        gen = [gen[j] for j in rng.choice(len(gen), half, replace=False)]
    imp = []
    while len(imp) < len(gen) and len(set(lab.tolist())) > 1:
        a, b = rng.integers(0, len(idx), 2)
        if lab[a] != lab[b]:
            imp.append((int(a), int(b)))
    pairs = np.array(gen + imp, np.int64).reshape(-1, 2)
    same = np.array([True] * len(gen) + [False] * len(imp))
    return pairs[:, 0], pairs[:, 1], same


def pair_accuracy(ea: np.ndarray, eb: np.ndarray, same: np.ndarray, folds: int = 10) -> float:
    """k-fold verification accuracy (threshold chosen on the other folds) of cosine scores."""
    from trainer.eval import cosine_pair_scores, lfw_10fold

    if len(same) < 2 * folds or same.all() or not same.any():
        return float("nan")
    f = np.random.default_rng(0).permutation(len(same)) % folds
    return float(lfw_10fold(cosine_pair_scores(ea, eb), same, f).accuracy_mean)


def embed_chips(net, chips: np.ndarray, batch: int = 64, threads: int = 0) -> np.ndarray:
    """(N, D) raw descriptors of uint8 RGB chips (N, S, S, 3).

    A :class:`DlibResNet` (S = 150, D = 128) is exported to ONNX and run by ONNX Runtime (bit-compatible to ~1e-6
    with torch and ~5x faster on CPU than torch's eager forward); any other student (S = 112, D = its embedding
    width) runs in torch, eval mode, ``torch.no_grad()``, ``batch`` chips at a time (training mode restored).
    An :class:`OnnxTeacher` embeds its own crops (S = its ``input_size``, D = its ``dim``)."""
    if isinstance(net, OnnxTeacher):
        return net.descriptors(chips)
    if student_arch(net) != "dlib":
        return torch_embed(net, chips, batch, threads)
    from trainer.student.graph import export_onnx_bytes, ort_descriptors, ort_session

    if not len(chips):
        return np.zeros((0, 128), np.float32)
    return ort_descriptors(ort_session(export_onnx_bytes(net), threads), chips, batch)


def torch_embed(net, chips: np.ndarray, batch: int = 64, threads: int = 0) -> np.ndarray:
    """(N, D) float32 raw embeddings of uint8 RGB chips (N, S, S, 3) by ``net`` (float RGB [0, 255] NCHW input)
    in torch: eval mode, no gradients, ``batch`` chips per forward; ``threads > 0`` sets torch's intra-op threads
    for the call.  The module's training flag is restored."""
    import torch

    net = getattr(net, "module", net)
    dim = int(getattr(net, "embedding_dim", 128))
    if not len(chips):
        return np.zeros((0, dim), np.float32)
    old_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    was = net.training
    net.eval()
    try:
        out = []
        with torch.no_grad():
            for s in range(0, len(chips), batch):
                x = to_input(torch.from_numpy(np.ascontiguousarray(chips[s:s + batch])))
                out.append(net(x).float().numpy())
    finally:
        net.train(was)
        torch.set_num_threads(old_threads)
    return np.concatenate(out).astype(np.float32)


class Validator:
    """Held-out pair verification, clean (a) vs masked (b); the teacher baseline is computed once.

    ``ds`` yields the *student's* chips (150x150 dlib chips or 112x112 ArcFace crops).  The teacher always sees
    its own crops (the dlib teacher: 150x150 dlib chips; an :class:`OnnxTeacher`: its ``crop``):
    ``teacher_clean`` are their precomputed descriptors and, when the student's chips are not the teacher's,
    ``teacher_ds`` (the same images with the teacher's crop matrices) gives the teacher's masked crops -- same
    synthesis seed per image (``sample_seed(seed, -1, i)``), the occluder placed from the crop's own landmarks.
    ``teacher_ds=None``: the teacher embeds ``ds``'s masked chips (student and teacher see the same crops)."""

    def __init__(self, ds: MaskedChipDataset, val_idx: np.ndarray, teacher_clean: np.ndarray, teacher, n_pairs: int,
                 seed: int, progress: bool = True, teacher_ds: MaskedChipDataset | None = None):
        from tqdm import tqdm

        self.idx = np.asarray(val_idx)
        self.a, self.b, self.same = val_pairs(ds.labels, self.idx, n_pairs, seed)
        empty = np.zeros((0, ds.chip_size, ds.chip_size, 3), np.uint8)
        items = [ds[(int(i), -1)] for i in tqdm(self.idx, desc="val chips", disable=not progress)]
        self.masked = np.stack([it[0] for it in items]) if items else empty
        self.clean = np.stack([it[1] for it in items]) if items else empty
        if teacher_ds is None:
            self.teacher_masked = self.masked
        else:
            t_items = [teacher_ds[(int(i), -1)][0]
                       for i in tqdm(self.idx, desc="val chips (teacher)", disable=not progress)]
            self.teacher_masked = np.stack(t_items) if t_items else \
                np.zeros((0, teacher_ds.chip_size, teacher_ds.chip_size, 3), np.uint8)
        tc = teacher_clean[self.idx]
        tm = embed_chips(teacher, self.teacher_masked)
        self.baseline = {"teacher_clean_vs_masked": pair_accuracy(tc[self.a], tm[self.b], self.same),
                         "teacher_clean_vs_clean": pair_accuracy(tc[self.a], tc[self.b], self.same),
                         "pairs": int(len(self.same))}

    def __call__(self, student) -> dict[str, float]:
        was = student.training
        student.eval()
        sm, sc = embed_chips(student, self.masked), embed_chips(student, self.clean)
        student.train(was)
        return {"student_clean_vs_masked": pair_accuracy(sc[self.a], sm[self.b], self.same),
                "student_clean_vs_clean": pair_accuracy(sc[self.a], sc[self.b], self.same),
                "student_masked_vs_masked": pair_accuracy(sm[self.a], sm[self.b], self.same)}

"""trainer.eval metrics and report, checked against hand-computed values and brute force."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer.eval import (
    auc,
    cosine_pair_scores,
    lfw_10fold,
    markdown_table,
    pair_folds,
    plot_roc,
    psnr,
    psnr_batch,
    rank1_identification,
    roc_auc,
    roc_curve,
    ssim,
    ssim_batch,
    tar_at_far,
    write_report,
)


# --------------------------------------------------------------------------------------------------
# LFW 10-fold
# --------------------------------------------------------------------------------------------------
def toy_20_pairs():
    """10 folds x (1 genuine, 1 impostor).

    genuine  g_k: fold 0 -> 0.20 (hard outlier), fold k=1..9 -> 0.60 + 0.01 k  (0.61 .. 0.69)
    impostor h_k: fold k=0..8 -> 0.10 + 0.01 k (0.10 .. 0.18),   fold 9 -> 0.655 (hard outlier)
    """
    g = np.array([0.20] + [0.60 + 0.01 * k for k in range(1, 10)])
    h = np.array([0.10 + 0.01 * k for k in range(9)] + [0.655])
    scores = np.concatenate([g, h])
    labels = np.concatenate([np.ones(10, bool), np.zeros(10, bool)])
    folds = np.concatenate([np.arange(10), np.arange(10)])
    return scores, labels, folds


def test_lfw_10fold_hand_computed_toy():
    # Derivation (accept iff score >= thr; best threshold on the 18 training pairs of the 9 other folds):
    # * test fold 0 (g=0.20, h=0.10 held out): training = impostors 0.11..0.18 and 0.655, genuines
    #   0.61..0.69. Any thr in (0.18, 0.61] errs only on 0.655 (17/18); thr in (0.655, 0.66] would
    #   reject 0.61..0.65 (5 errors). Only midpoint in (0.18, 0.61]: (0.18+0.61)/2 = 0.395.
    #   Test: g=0.20 < 0.395 rejected (wrong), h=0.10 rejected (right) -> 0.5.
    # * test folds 1..8: training keeps g0=0.20 and h9=0.655. thr in (max low impostor, 0.20] errs
    #   only on 0.655 (17/18); rejecting 0.20 adds an error, lower thr accepts impostors.
    #   Max low impostor is 0.18 (folds 1..7) -> midpoint 0.19; fold 8 removes 0.18 -> (0.17+0.20)/2
    #   = 0.185. Test: g_k >= 0.61 accepted, h_k <= 0.18 rejected -> 1.0.
    # * test fold 9 (g=0.69, h=0.655 held out): training separable, impostors 0.10..0.18 and
    #   genuines 0.20, 0.61..0.68 -> midpoint 0.19, 18/18. Test: 0.69 accepted (right), 0.655
    #   accepted (wrong) -> 0.5.
    # Accuracies [0.5, 1 x 8, 0.5]: mean 0.9; population var = (2*0.4^2 + 8*0.1^2)/10 = 0.04 -> std 0.2.
    res = lfw_10fold(*toy_20_pairs())
    assert res.fold_accuracies.tolist() == [0.5] + [1.0] * 8 + [0.5]
    assert res.fold_thresholds == pytest.approx([0.395] + [0.19] * 7 + [0.185, 0.19], abs=1e-12)
    assert res.accuracy_mean == pytest.approx(0.9, abs=1e-12)
    assert res.accuracy_std == pytest.approx(0.2, abs=1e-12)
    assert res.fold_ids.tolist() == list(range(10)) and res.n_folds == 10


def test_lfw_10fold_separable_is_100():
    rng = np.random.default_rng(1)
    folds = pair_folds(600, 10)
    labels = np.tile(np.repeat([True, False], 30), 10)
    scores = np.where(labels, rng.uniform(0.5, 1.0, 600), rng.uniform(-1.0, 0.4, 600))
    res = lfw_10fold(scores, labels, folds)
    assert res.accuracy_mean == 1.0 and res.accuracy_std == 0.0
    assert np.all((res.fold_thresholds > 0.4) & (res.fold_thresholds < 0.5))


def test_lfw_10fold_fully_overlapping():
    # every score equal: the only candidates are -inf (accept all: acc = fraction genuine = 0.5 on
    # a balanced training set) and +inf (reject all: 0.5). Tie -> smallest = -inf, so every test
    # pair is accepted; each fold is balanced -> 0.5 each, std 0.
    labels = np.tile([True, False], 50)
    res = lfw_10fold(np.full(100, 0.3), labels, pair_folds(100, 10))
    assert res.accuracy_mean == 0.5 and res.accuracy_std == 0.0
    assert np.all(res.fold_thresholds == -np.inf)
    # 70 % genuine -> accept-all wins outright, accuracy 0.7
    labels = np.tile([True] * 7 + [False] * 3, 10)
    assert lfw_10fold(np.zeros(100), labels, pair_folds(100, 10)).accuracy_mean == pytest.approx(0.7)


def brute_force_10fold(scores, labels, folds):
    """Independent O(P^2) reference: loop over every candidate, first maximum wins."""
    accs, thrs = [], []
    for f in sorted(set(folds.tolist())):
        tr, te = folds != f, folds == f
        u = sorted(set(scores[tr].tolist()))
        cands = [-math.inf] + [(u[i] + u[i + 1]) / 2 for i in range(len(u) - 1)] + [math.inf]
        best, best_t = -1, None
        for t in cands:
            n = sum((s >= t) == y for s, y in zip(scores[tr], labels[tr]))
            if n > best:
                best, best_t = n, t
        thrs.append(best_t)
        accs.append(sum((s >= best_t) == y for s, y in zip(scores[te], labels[te])) / te.sum())
    accs = np.array(accs)
    return accs.mean(), np.sqrt(np.mean((accs - accs.mean()) ** 2)), accs, np.array(thrs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lfw_10fold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    folds = pair_folds(300, 10)
    labels = rng.random(300) < 0.5
    scores = rng.normal(0.0, 1.0, 300) + 1.2 * labels
    if seed == 2:                                   # coarse scores: many ties
        scores = np.round(scores, 1)
    res = lfw_10fold(scores, labels, folds)
    mean, std, accs, thrs = brute_force_10fold(scores, labels, folds)
    np.testing.assert_array_equal(res.fold_thresholds, thrs)
    np.testing.assert_allclose(res.fold_accuracies, accs, rtol=0, atol=1e-15)
    assert res.accuracy_mean == pytest.approx(mean, abs=1e-15)
    assert res.accuracy_std == pytest.approx(std, abs=1e-15)


def test_pair_folds_lfw_layout():
    f = pair_folds()
    assert f.shape == (6000,)
    assert np.bincount(f).tolist() == [600] * 10
    assert f[0] == 0 and f[599] == 0 and f[600] == 1 and f[-1] == 9
    assert np.all(np.diff(f) >= 0)
    with pytest.raises(ValueError):
        pair_folds(6001, 10)


def test_lfw_10fold_rejects_bad_input():
    s, y, f = toy_20_pairs()
    with pytest.raises(ValueError):
        lfw_10fold(s, y, np.zeros_like(f))          # one fold
    with pytest.raises(ValueError):
        lfw_10fold(np.r_[s[:-1], np.nan], y, f)
    with pytest.raises(ValueError):
        lfw_10fold(s, y[:-1], f)


# --------------------------------------------------------------------------------------------------
# TAR @ FAR, ROC
# --------------------------------------------------------------------------------------------------
def test_tar_at_far_exact_on_1000_impostors():
    imp = np.arange(1000) / 1000.0                 # 0.000 .. 0.999, distinct
    gen = np.array([0.9995] * 37 + [0.9985] * 13 + [0.998] * 25 + [0.5] * 25)
    scores = np.r_[gen, imp]
    labels = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    ops = tar_at_far(scores, labels, (1e-2, 1e-3))
    # FAR 1e-3 -> 1 false accept allowed: only 0.999 accepted, thr just above 0.998 (2nd highest).
    # Genuine > 0.998: 37 + 13 = 50 (the 25 at exactly 0.998 tie with the impostor: rejected).
    tar, thr, far = ops[1e-3]
    assert tar == 0.50 and far == 0.001
    assert thr == np.nextafter(0.998, 1.0) and thr > 0.998
    # FAR 1e-2 -> 10 false accepts (0.990 .. 0.999), thr just above 0.989: genuine 37+13+25 = 75.
    tar, thr, far = ops[1e-2]
    assert tar == 0.75 and far == 0.01 and thr == np.nextafter(0.989, 1.0)


def test_tar_at_far_3000_impostors_allows_3_and_ties():
    imp = np.linspace(-1, 0.5, 3000)
    gen = np.array([0.6, 0.4, 0.0])
    op = tar_at_far(np.r_[gen, imp], np.r_[np.ones(3, bool), np.zeros(3000, bool)], (1e-3,))[1e-3]
    assert op.achieved_far == 3 / 3000 and op.threshold > imp[-4] and op.threshold <= imp[-3]
    # all impostors tied: accepting any means accepting all -> FAR 0 at thr just above the tie
    op = tar_at_far(np.r_[0.7, 0.5, np.full(1000, 0.5)], np.r_[True, True, np.zeros(1000, bool)], (1e-3,))[1e-3]
    assert op.achieved_far == 0.0 and op.tar == 0.5 and op.threshold > 0.5
    # target 1 -> accept all
    op = tar_at_far(np.r_[gen, imp], np.r_[np.ones(3, bool), np.zeros(3000, bool)], (1.0,))[1.0]
    assert op.threshold == -np.inf and op.tar == 1.0 and op.achieved_far == 1.0


def test_tar_at_far_matches_brute_force():
    rng = np.random.default_rng(5)
    labels = rng.random(2500) < 0.3
    scores = np.round(rng.normal(0, 1, 2500) + 2 * labels, 2)      # ties on purpose
    imp, gen = scores[~labels], scores[labels]
    for target, op in tar_at_far(scores, labels, (1e-1, 1e-2, 1e-3, 0.0)).items():
        # smallest float64 thr with FAR <= target among all places where FAR can change
        cands = sorted({-np.inf} | {float(np.nextafter(u, np.inf)) for u in imp} | set(scores.tolist()))
        thr = next(t for t in cands if np.mean(imp >= t) <= target)
        assert op.threshold == thr
        assert op.tar == np.mean(gen >= thr) and op.achieved_far == np.mean(imp >= thr)


def test_roc_and_auc():
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    far, tar, thr = roc_curve(s, y)
    assert far.tolist() == [0, 0, 0, 0, 1 / 3, 2 / 3, 1]
    assert tar.tolist() == [0, 1 / 3, 2 / 3, 1, 1, 1, 1]
    assert thr[0] == np.inf and thr[1:].tolist() == s.tolist()
    assert auc(far, tar) == 1.0 and roc_auc(s, y) == 1.0
    assert roc_auc(-s, y) == 0.0
    # AUC = P(gen > imp) + 0.5 P(tie) (Mann-Whitney), with ties
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.5
    s = np.round(rng.normal(0, 1, 400) + y, 1)
    g, i = s[y][:, None], s[~y][None, :]
    assert roc_auc(s, y) == pytest.approx(np.mean(g > i) + 0.5 * np.mean(g == i), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# identification
# --------------------------------------------------------------------------------------------------
def test_rank1_identification_toy_gallery():
    gallery = np.eye(3) * 5.0                      # scale irrelevant: rows are L2-normalised
    g_lab = np.array(["A", "B", "C"])
    probes = np.array([
        [0.9, 0.1, 0.0],    # A: A first                     -> rank 1
        [0.2, 0.5, 0.8],    # B: C 0.8 > B 0.5               -> rank 2
        [0.1, 0.3, 0.9],    # C: C first                     -> rank 1
        [0.1, 0.2, 0.3],    # A: C > B > A                   -> rank 3
        [1.0, 1.0, 0.0],    # B: tie with A, counted against -> rank 2
    ])
    p_lab = np.array(["A", "B", "C", "A", "B"])
    assert rank1_identification(gallery, g_lab, probes, p_lab) == pytest.approx(2 / 5)
    assert rank1_identification(gallery, g_lab, probes, p_lab, ks=[2, 3]) == {1: 0.4, 2: 0.8, 3: 1.0}
    # two gallery images for A: identity score is the best one
    g2 = np.vstack([gallery, [0.3, 0.5, 0.6]])   # cos .99 with probe 4, .90 < .94 (C) with probe 3
    assert rank1_identification(g2, np.append(g_lab, "A"), probes, p_lab) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):                 # closed set: D not enrolled
        rank1_identification(gallery, g_lab, probes[:1], np.array(["D"]))


def test_cosine_pair_scores():
    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [4.0, -3.0]])
    assert cosine_pair_scores(a, b).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------------
# completion quality
# --------------------------------------------------------------------------------------------------
def test_psnr_uniform_error_and_mask():
    a = np.full((32, 40, 3), 100, np.uint8)
    b = a + np.uint8(10)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 10))
    assert psnr(a, a) == math.inf
    # error 10 inside the mask, 50 outside: masked PSNR only sees the 10
    mask = np.zeros((32, 40), bool)
    mask[16:, 10:30] = True
    c = np.full_like(a, 150)
    c[mask] = 110
    assert psnr(a, c, mask) == pytest.approx(20 * math.log10(255 / 10))
    assert psnr(a, c) < 20 * math.log10(255 / 40)
    # grayscale, float data range 1
    assert psnr(np.zeros((8, 8)), np.full((8, 8), 0.1), data_range=1.0) == pytest.approx(20.0)
    assert psnr_batch([a, a], [b, c], [None, mask]) == pytest.approx([20 * math.log10(25.5)] * 2)
    with pytest.raises(ValueError):
        psnr(a, c, np.zeros((32, 40), bool))


def test_ssim_identical_masked_and_reference():
    from skimage import data
    from skimage.metrics import structural_similarity

    img = data.astronaut()[::4, ::4]                # 128x128x3 uint8
    assert ssim(img, img) == pytest.approx(1.0)
    mask = np.zeros(img.shape[:2], bool)
    mask[70:110, 30:100] = True
    assert ssim(img, img, mask) == pytest.approx(1.0)
    # damage only far (> 3 px window radius) from the mask: masked SSIM stays 1, global drops
    noisy = img.copy()
    noisy[:40] = np.random.default_rng(0).integers(0, 256, noisy[:40].shape, dtype=np.uint8)
    assert ssim(img, noisy, mask) == pytest.approx(1.0)
    assert ssim(img, noisy) < 0.9
    # mask=None is skimage's own number; masked = mean of the full map over the masked pixels
    ref, smap = structural_similarity(img, noisy, data_range=255, channel_axis=-1, full=True)
    assert ssim(img, noisy) == pytest.approx(ref)
    m2 = np.zeros(img.shape[:2], bool)
    m2[20:60, 20:60] = True
    assert ssim(img, noisy, m2) == pytest.approx(smap[m2].mean())
    gray = img[..., 0]
    assert ssim_batch([gray, gray], [gray, noisy[..., 0]]).tolist()[0] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def test_plot_roc_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.5
    curves = {}
    for name, sep in (("unmasked", 3.0), ("masked", 1.0)):
        far, tar, _ = roc_curve(rng.normal(0, 1, 500) + sep * y, y)
        curves[name] = (far, tar)
    out = plot_roc(curves, tmp_path / "sub" / "roc.png")
    raw = out.read_bytes()
    assert len(raw) > 1000 and raw[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_table_and_json(tmp_path):
    s, y, f = toy_20_pairs()
    ver = lfw_10fold(s, y, f)
    results = {
        "unmasked": {
            "verification": {"accuracy_mean": 0.9938, "accuracy_std": 0.0027},
            "tar_at_far": {1e-2: (0.9871, 0.41, 0.01), 1e-3: (0.9512, 0.5, 0.001)},
            "rank1": 0.975,
        },
        "masked": {
            "surgical": {"verification": ver, "tar_at_far": tar_at_far(s, y), "rank_k": {1: 0.8, 5: 0.95}},
            "n95": {"verification": ver, "psnr": np.array([20.0, 22.5]), "ssim": 0.91234},
        },
    }
    j, m = write_report(results, tmp_path / "r.json", tmp_path / "r.md", meta={"model": "baseline"})
    md = m.read_text()
    assert "99.38 ± 0.27" in md and "90.00 ± 20.00" in md
    assert "TAR@FAR=1e-2 (%)" in md and "TAR@FAR=1e-3 (%)" in md
    assert "| unmasked | 99.38 ± 0.27 | 98.71 | 95.12 | 97.50 |" in md
    assert "| masked / surgical |" in md and "| masked / n95 |" in md
    assert "Rank-5 (%)" in md and "95.00" in md and "21.25" in md and "0.9123" in md
    assert "**model**: baseline" in md
    assert md == "# LookThrough evaluation\n\n- **model**: baseline\n\n" + markdown_table(results)
    data = json.loads(j.read_text())                 # strict JSON (inf -> "inf")
    assert data["results"]["unmasked"]["tar_at_far"]["0.001"] == [0.9512, 0.5, 0.001]
    sur = data["results"]["masked"]["surgical"]
    assert sur["verification"]["accuracy_mean"] == pytest.approx(0.9)
    assert sur["tar_at_far"]["0.01"]["tar"] == tar_at_far(s, y)[1e-2].tar
    assert data["results"]["masked"]["n95"]["psnr"] == [20.0, 22.5]
    # the JSON round trip renders the same table
    assert markdown_table(data["results"]) == markdown_table(results)

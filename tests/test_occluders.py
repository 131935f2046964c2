import numpy as np

from sdk.occluders import draw_surgical_mask, surgical_mask_polygon

LM = np.array([[200, 100], [250, 100], [225, 130], [205, 155], [245, 155]], np.float32)


def test_mask_covers_exactly_the_changed_pixels_and_the_lower_face():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    before = frame.copy()
    out, occ = draw_surgical_mask(frame, LM, seed=3)
    changed = np.any(out != frame, axis=2)
    assert not changed[occ == 0].any()           # nothing outside the mask changed
    assert changed[occ == 1].mean() > 0.97       # (a random pixel may equal the fabric by chance)
    ys, xs = np.nonzero(occ)
    assert ys.min() > LM[:2, 1].max()             # below the eyes
    assert ys.max() > LM[3:, 1].max() + 10        # down to the chin
    inside = occ[int(LM[3, 1]), int(LM[3, 0])] and occ[int(LM[2, 1]) + 3, int(LM[2, 0])]
    assert inside                                  # mouth corner and nose tip covered
    assert np.array_equal(frame, before)          # input untouched


def test_deterministic_and_follows_rotation():
    frame = np.zeros((300, 400, 3), np.uint8)
    a, _ = draw_surgical_mask(frame, LM, seed=1)
    b, _ = draw_surgical_mask(frame, LM, seed=1)
    assert np.array_equal(a, b)
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    c = LM.mean(0)
    poly = surgical_mask_polygon(LM)
    poly_r = surgical_mask_polygon((LM - c) @ rot.T + c)
    np.testing.assert_allclose(poly_r, (poly - c) @ rot.T + c, atol=1e-3)

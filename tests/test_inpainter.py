"""Face inpainter: generator / critics shapes, exact composite, ONNX parity, the inpainting losses against
their formulas, the ID-GAN identity-diversity loss with a tiny fake recogniser, and a few training steps.

Fast (no ../shared data): faces are 112x112 ArcFace crops of scikit-image's astronaut with procedural masks.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdk.align import ARCFACE_112, ARCFACE_CROP, align  # noqa: E402

#: MTCNN landmarks of the astronaut in skimage.data.astronaut() (the baseline detector's output).
ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)


def _masks(b: int, size: int = 112, seed: int = 0) -> "torch.Tensor":
    rng = np.random.default_rng(seed)
    m = torch.zeros(b, 1, size, size)
    for i in range(b):
        h, w = rng.integers(size // 5, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        m[i, 0, y:y + h, x:x + w] = 1
    return m


@pytest.fixture(scope="module")
def small_gen():
    from trainer.models.inpainter import Generator, InpainterConfig

    with torch.random.fork_rng():  # seeded, without touching the session's RNG
        torch.manual_seed(0)
        return Generator(InpainterConfig(width=8, disc_width=8)).eval()


@pytest.mark.slow
def test_shapes_and_exact_composite(small_gen):
    from trainer.models.inpainter import GlobalDiscriminator, InpainterConfig, LocalDiscriminator, mask_boxes

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 112, 112, generator=g) * 2 - 1
    m = _masks(3)
    with torch.no_grad():
        y1, y2, out = small_gen(x, m, return_stages=True)
    assert y1.shape == y2.shape == out.shape == x.shape
    known = m.expand_as(x) == 0
    assert torch.equal(out[known], x[known])  # known pixels come back bit-exact
    hole = ~known
    assert torch.equal(out[hole], y2[hole])
    # the hole content of the input is ignored
    x2 = torch.where(hole, torch.randn(x.shape, generator=g), x)
    with torch.no_grad():
        assert torch.allclose(small_gen(x2, m), out, atol=1e-6)
    cfg = InpainterConfig(disc_width=8)
    boxes = mask_boxes(m, cfg.min_box)
    assert boxes.shape == (3, 4)
    assert GlobalDiscriminator(cfg)(out).shape == (3,)
    assert LocalDiscriminator(cfg)(out, boxes).shape == (3,)


def test_mask_boxes_and_crop():
    from trainer.models.inpainter import crop_boxes, mask_boxes

    m = torch.zeros(3, 1, 112, 112)
    m[0, 0, 60:100, 20:90] = 1  # 40 x 70 -> 70 square centred on y = 80 -> y0 = 45, clamped to 112 - 70
    m[1, 0, 0:5, 0:5] = 1  # small, corner -> min_box 24 clamped into the image
    b = mask_boxes(m, 24)
    assert b[0].tolist() == [20.0, 42.0, 70.0, 70.0]
    assert b[1].tolist() == [0.0, 0.0, 24.0, 24.0]
    assert b[2].tolist() == [0.0, 0.0, 112.0, 112.0]  # no hole: whole image
    x = torch.arange(112 * 112, dtype=torch.float32).view(1, 1, 112, 112).repeat(3, 3, 1, 1)
    c = crop_boxes(x, torch.tensor([[8.0, 16.0, 32.0, 32.0]] * 3), 32)  # same size: an exact pixel crop
    assert torch.allclose(c, x[:, :, 16:48, 8:40], atol=1e-2)


@pytest.mark.slow
def test_flops_params_budget():
    from trainer.models.inpainter import Generator, count_flops, count_params

    g = Generator()
    assert count_flops(g) <= 1.5e9
    assert 2e5 < count_params(g) < 2e6


@pytest.mark.slow
def test_onnx_export_parity(small_gen, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from trainer.models.inpainter import export_onnx

    p = export_onnx(small_gen, tmp_path / "inpainter.onnx")
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1
    m = _masks(2, seed=3)
    with torch.no_grad():
        ref = small_gen(x, m).numpy()
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": x.numpy(), "mask": m.numpy()})
    assert np.abs(got - ref).max() <= 1e-4


def test_spatial_discount_hand_values():
    from trainer.losses.inpaint import spatial_discount

    m = torch.zeros(2, 1, 5, 6)
    m[0, 0, 1:4, 1:5] = 1  # 3 x 4 hole: interior pixels (2, 2), (2, 3) are 2 px from the known ring
    w = spatial_discount(m, gamma=0.5)
    exp = np.ones((5, 6))
    exp[1:4, 1:5] = 0.5
    exp[2, 2:4] = 0.25
    np.testing.assert_allclose(w[0, 0].numpy(), exp, rtol=1e-6)
    assert torch.all(w[1] == 1)  # no hole
    full = spatial_discount(torch.ones(1, 1, 4, 4))  # no known pixel: weight 1
    assert torch.all(full == 1)
    # Euclidean distance: a pixel diagonal-only to the known region is sqrt(2) away
    m2 = torch.ones(1, 1, 3, 3)
    m2[0, 0, 0, 0] = 0
    w2 = spatial_discount(m2, gamma=0.9)[0, 0]
    assert math.isclose(float(w2[1, 1]), 0.9 ** math.sqrt(2), rel_tol=1e-6)
    assert math.isclose(float(w2[2, 2]), 0.9 ** math.sqrt(8), rel_tol=1e-6)


def test_discounted_and_known_l1_formula():
    from trainer.losses.inpaint import discounted_l1, known_l1, spatial_discount

    g = torch.Generator().manual_seed(1)
    p, t = torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    m = torch.zeros(2, 1, 6, 6)
    m[0, 0, 1:5, 2:5] = 1
    m[1, 0, 3:6, 0:2] = 1
    w = spatial_discount(m, 0.99)
    got = discounted_l1(p, t, m, gamma=0.99)
    exp = 0.0
    for b in range(2):
        for c in range(3):
            for y in range(6):
                for x in range(6):
                    if m[b, 0, y, x]:
                        exp += abs(float(p[b, c, y, x] - t[b, c, y, x])) * float(w[b, 0, y, x])
    exp /= 3 * float(m.sum())
    assert math.isclose(float(got), exp, rel_tol=1e-5)
    k = (1 - m).expand_as(p).bool()
    assert math.isclose(float(known_l1(p, t, m)), float((p - t).abs()[k].mean()), rel_tol=1e-5)


def test_gradient_penalty_and_wgan():
    from trainer.losses.inpaint import d_wgan_loss, g_wgan_loss, gradient_penalty
    from trainer.models.inpainter import GlobalDiscriminator, InpainterConfig

    # linear critic D(x) = sum(a * x): grad = a everywhere -> GP = (||a|| - 1)^2 exactly
    a = torch.full((1, 2, 3, 3), 0.5)
    g = torch.Generator().manual_seed(4)
    gp = gradient_penalty(lambda z: (z * a).flatten(1).sum(1), torch.randn(4, 2, 3, 3, generator=g),
                          torch.randn(4, 2, 3, 3, generator=g))
    assert math.isclose(float(gp), (math.sqrt(18 * 0.25) - 1) ** 2, rel_tol=1e-5)
    D = GlobalDiscriminator(InpainterConfig(disc_width=8))
    real, fake = torch.rand(2, 3, 112, 112, generator=g), torch.rand(2, 3, 112, 112, generator=g)
    gp = gradient_penalty(D, real, fake)
    assert torch.isfinite(gp) and gp.requires_grad
    gp.backward()
    assert all(torch.isfinite(q.grad).all() for q in D.parameters() if q.grad is not None)
    dr, df = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -0.5])
    assert float(d_wgan_loss(dr, df)) == -2.0 and float(g_wgan_loss(df)) == 0.0


class _FakeRecognizer(torch.nn.Module):
    """R^l = 2x2 average pool of the image, R^h = a fixed linear map of the flattened image."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = torch.nn.Parameter(torch.randn(3 * 4 * 4, 6, generator=g), requires_grad=False)

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 2), x.flatten(1) @ self.w


def test_identity_diversity_loss_formula():
    from trainer.losses.inpaint import IdentityDiversityLoss, identity_centres

    R = _FakeRecognizer()
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(5, 3, 4, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1])
    centres = identity_centres(R, clean, labels, 3)
    h = R(clean)[1]
    assert torch.allclose(centres[0], (h[0] + h[2]) / 2, atol=1e-6)
    assert torch.allclose(centres[2], h[3], atol=1e-6)

    X = (clean + 0.3 * torch.randn(5, 3, 4, 4, generator=g)).requires_grad_(True)
    loss_fn = IdentityDiversityLoss(R, centres, alpha_l=0.5, alpha_h=0.05, beta=0.5)
    loss, parts = loss_fn(X, clean, labels)
    exp = 0.0
    for i in range(5):
        lx, hx = R(X[i:i + 1].detach())
        ly, hy = R(clean[i:i + 1])
        f = centres[labels[i]]
        exp += (0.5 * float((lx - ly).norm()) + 0.05 * float((hx - hy).norm())
                + 0.5 * max(float((hx[0] - f).norm()) - float((hy[0] - f).norm()), 0.0))
    assert math.isclose(float(loss), exp / 5, rel_tol=1e-5)
    loss.backward()
    assert X.grad is not None and torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0
    assert R.w.grad is None  # the recogniser stays frozen
    # X == Y: every term vanishes
    l2, p2 = loss_fn(clean.clone(), clean, labels)
    assert p2["id_div"] == 0.0 and float(l2) < 1e-4


def test_arc_to_chip_warp_matches_templates():
    from sdk.align import DLIB_150
    from trainer.losses.inpaint import arc_to_chip_theta

    th = arc_to_chip_theta()[0].numpy().astype(np.float64)
    for (u, v), (px, py) in zip(DLIB_150, ARCFACE_112):
        n = th @ np.array([(2 * u + 1) / 150 - 1, (2 * v + 1) / 150 - 1, 1.0])
        x, y = ((n + 1) * 112 - 1) / 2
        assert abs(x - px) < 2.0 and abs(y - py) < 2.0  # least-squares fit residual of the two templates


def _astro_crops(astronaut_bgr, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        lm = ASTRO_LM + rng.normal(0, 1.5, ASTRO_LM.shape).astype(np.float32)
        out.append(align(astronaut_bgr, lm, ARCFACE_CROP))
    return np.stack(out)


@pytest.mark.slow
def test_train_steps_and_checkpoint_roundtrip(astronaut_bgr, tmp_path):
    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig
    from trainer.inpainter_train import InpaintTrainConfig, Trainer, evaluate, save_grid, to_tensor
    from trainer.models.inpainter import load_checkpoint

    crops = _astro_crops(astronaut_bgr, 3)
    synth = MaskSynthesizer(SynthesisConfig())
    rng = np.random.default_rng(1)
    ms = np.stack([synth(c, ARCFACE_112, rng, category="block").mask for c in crops]).astype(np.float32)
    x, m = to_tensor(crops, ms)
    cfg = InpaintTrainConfig(width=8, disc_width=8, lr=2e-3)
    tr = Trainer(cfg)
    first = tr.step(x, m)
    for _ in range(7):
        last = tr.step(x, m)
    assert np.isfinite([last["g_loss"], last["d_loss"], last["gp"]]).all()
    assert last["l1"] < 0.8 * first["l1"]

    tr.save(tmp_path / "ck", {"step": 8})
    g2, ck = load_checkpoint(tmp_path / "ck")
    assert ck["step"] == 8 and ck["models"]["generator"]["width"] == 8
    assert ck["preprocess"]["generator"]["colour"] == "bgr" and ck["preprocess"]["generator"]["layout"] == "nchw"
    tr.G.eval()
    with torch.no_grad():
        assert torch.equal(g2(x, m), tr.G(x, m))
    tr2 = Trainer(cfg)
    tr2.load(tmp_path / "ck")
    for mod in ("Dg", "Dl"):
        for (k, a), b in zip(getattr(tr2, mod).state_dict().items(), getattr(tr, mod).state_dict().values()):
            assert torch.equal(a, b), (mod, k)
    for opt2, opt in ((tr2.opt_g, tr.opt_g), (tr2.opt_d, tr.opt_d)):
        s2, s1 = opt2.state_dict()["state"], opt.state_dict()["state"]
        assert s2.keys() == s1.keys() and len(s1) > 0
        for pid in s1:
            for name in s1[pid]:
                assert torch.equal(torch.as_tensor(s2[pid][name]), torch.as_tensor(s1[pid][name])), (pid, name)

    val = {"x": crops, "m": ms, "cat": np.array(["block"] * 3)}
    ev = evaluate(tr.G, val)
    assert np.isfinite(ev["psnr_hole"]) and -1 <= ev["ssim_hole"] <= 1 and ev["per_category"]["block"]["n"] == 3
    save_grid(tr.G, val, tmp_path / "grid.png", rows=2)
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_trainer_step_with_identity_loss(astronaut_bgr):
    from trainer.inpainter_train import InpaintTrainConfig, Trainer, to_tensor
    from trainer.losses.inpaint import IdentityDiversityLoss, identity_centres

    def rec(x):  # tiny fake recogniser on 112 crops
        return torch.nn.functional.avg_pool2d(x, 8), x.mean((2, 3))

    crops = _astro_crops(astronaut_bgr, 2)
    x = to_tensor(crops)
    m = _masks(2, seed=4)
    labels = torch.tensor([0, 1])
    loss = IdentityDiversityLoss(rec, identity_centres(rec, x, labels, 2))
    tr = Trainer(InpaintTrainConfig(width=8, disc_width=8, id_loss=True, id_weight=1.0), loss)
    p = tr.step(x, m, labels)
    assert np.isfinite([p["id"], p["id_low"], p["id_high"], p["id_div"], p["g_loss"]]).all()


@pytest.mark.slow
def test_dlib_features_through_fixed_warp(astronaut_bgr):
    """The 112 crop warped by the fixed ARCFACE_112 -> DLIB_150 affine gives (almost) the dlib descriptor
    of the chip cut directly from the frame."""
    from sdk.align import DLIB_CROP
    from trainer.inpainter_train import to_tensor
    from trainer.losses.inpaint import DlibIdentityFeatures
    from trainer.models.dlib_resnet import DlibResNet, default_dat_path, preprocess

    try:
        dat = default_dat_path()
    except ImportError:
        pytest.skip("face_recognition_models not installed")
    if not dat.is_file():
        pytest.skip("dlib .dat missing")
    R = DlibIdentityFeatures(DlibResNet.from_dat(dat))
    crop = align(astronaut_bgr, ASTRO_LM, ARCFACE_CROP)
    chip = np.ascontiguousarray(align(astronaut_bgr, ASTRO_LM, DLIB_CROP)[:, :, ::-1])
    with torch.no_grad():
        low, high = R(to_tensor(crop[None]))
        direct = R.teacher(preprocess(chip))
    assert low.shape == (1, 32, 35, 35) and high.shape == (1, 128)
    assert float((high - direct).norm()) < 0.3  # dlib's same-person threshold is 0.6


@pytest.mark.slow
def test_training_loop_resumes_exactly(astro_faces, tmp_path, kill_and_resume, same_checkpoints):
    """4 generator updates straight == killed after 3 (checkpoint at 2) + resumed: identical generator, critics,
    both Adam states -- including the WGAN-GP interpolation draws (the RNG state is in the checkpoint)."""
    import dataclasses

    from trainer.data.synthesis import MaskSynthesizer
    from trainer.inpainter_train import InpaintTrainConfig, InpainterPlugin, train

    torch.set_num_threads(1)
    cfg = InpaintTrainConfig(out=str(tmp_path / "straight"), width=4, disc_width=4, batch_size=2, steps=4, lr=1e-3,
                             ckpt_every=2, grid_every=100, log_every=1, val_images=1, val_fraction=0.25,
                             snapshot_every=2, progress=False)
    result = train(cfg, faces=astro_faces, synth=MaskSynthesizer())
    assert result["steps"] == 4 and np.isfinite(result["psnr_hole"])
    snap = tmp_path / "straight" / "snapshots" / "step_000002"
    assert snap.with_suffix(".safetensors").is_file() and snap.with_suffix(".json").is_file()
    kill_and_resume(InpainterPlugin, 3, lambda resume: train(
        dataclasses.replace(cfg, out=str(tmp_path / "killed"), resume=resume), faces=astro_faces,
        synth=MaskSynthesizer()))
    ck = same_checkpoints(tmp_path / "straight", tmp_path / "killed")
    assert set(ck.modules) == {"generator", "global", "local"} and "rng.torch" in ck.optim


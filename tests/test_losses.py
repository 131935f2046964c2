"""Distillation losses and margin heads against direct per-element (loop) formulas, plus gradient safety."""
from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from trainer.losses.distill import (  # noqa: E402
    CentreBank,
    RelationalDistillLoss,
    batch_centres,
    identity_centres,
    instance_hard,
    instance_soft,
    pair_loss,
    triplet_loss,
)
from trainer.losses.margin import (  # noqa: E402
    ArcFaceHead,
    NormSoftmaxHead,
    SoftmaxHead,
    build_head,
    correctly_classified,
    pairwise_distill,
)

B = 5


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ------------------------------------------------------------------------------------- loop references
def _huber(a: float, b: float, delta: float) -> float:
    x = abs(a - b)
    return 0.5 * x * x if x <= delta else delta * (x - 0.5 * delta)


def _norm(v) -> float:
    return math.sqrt(sum(float(x) ** 2 for x in v))


def ref_instance_hard(s, t):
    return sum(sum(abs(float(t[i, d] - s[i, d])) for d in range(s.shape[1])) for i in range(s.shape[0])) / s.shape[0]


def ref_instance_soft(s, t, sc, tc, ids):
    tot = 0.0
    for i in range(s.shape[0]):
        c = int(ids[i])
        tot += sum(abs(float((t[i, d] - tc[c, d]) - (s[i, d] - sc[c, d]))) for d in range(s.shape[1]))
    return tot / s.shape[0]


def ref_pair(s, t, delta=1.0):
    n = s.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    ds = {p: _norm(s[p[0]] - s[p[1]]) for p in pairs}
    dt = {p: _norm(t[p[0]] - t[p[1]]) for p in pairs}
    ms, mt = sum(ds.values()) / len(pairs), sum(dt.values()) / len(pairs)
    return sum(_huber(ds[p] / ms, dt[p] / mt, delta) for p in pairs) / len(pairs)


def _cos_at(x, i, j, k) -> float:
    a, b = x[i] - x[j], x[k] - x[j]
    return float((a * b).sum()) / (_norm(a) * _norm(b))


def ref_triplet(s, t, delta=1.0):
    n = s.shape[0]
    trips = [(i, j, k) for i, j, k in itertools.product(range(n), repeat=3) if len({i, j, k}) == 3]
    return sum(_huber(_cos_at(s, i, j, k), _cos_at(t, i, j, k), delta) for i, j, k in trips) / len(trips)


# ---------------------------------------------------------------------------------------- instance
@pytest.mark.parametrize("d", [4, 8])
def test_instance_hard_matches_loop(d):
    s, t = _rand(B, d, seed=1), _rand(B, d, seed=2)
    assert instance_hard(s, t).item() == pytest.approx(ref_instance_hard(s, t), rel=1e-12)
    assert instance_hard(s, t, reduction="mean").item() == pytest.approx(ref_instance_hard(s, t) / d, rel=1e-12)
    assert instance_hard(s, t, reduction="sum").item() == pytest.approx(ref_instance_hard(s, t) * B, rel=1e-12)
    with pytest.raises(ValueError):
        instance_hard(_rand(B, d + 1), t)


def test_instance_soft_matches_loop_and_centres():
    d, c = 6, 3
    s, t = _rand(B, d, seed=3), _rand(B, d, seed=4)
    ids = torch.tensor([0, 2, 0, 1, 2])
    sc, tc = _rand(c, d, seed=5), _rand(c, d, seed=6)
    assert instance_soft(s, t, sc, tc, ids).item() == pytest.approx(ref_instance_soft(s, t, sc, tc, ids), rel=1e-12)
    # in-batch student centres (s_centres=None) == explicit per-identity batch means
    means = torch.stack([s[ids == k].mean(0) for k in range(c)])
    want = ref_instance_soft(s, t, means, tc, ids)
    assert instance_soft(s, t, None, tc, ids).item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(batch_centres(s, ids), means[ids])
    # eq. 18
    cen = identity_centres(t, ids, 4)
    for k in range(3):
        assert torch.allclose(cen[k], t[ids == k].mean(0))
    assert torch.all(cen[3] == 0)


def test_centre_bank_running_mean_and_ema():
    d = 4
    x, ids = _rand(10, d, seed=7).float(), torch.tensor([0, 1, 1, 2, 0, 0, 1, 2, 2, 2])
    exact = CentreBank(3, d, momentum=None)
    exact.update(x[:4], ids[:4])
    exact.update(x[4:], ids[4:])
    assert torch.allclose(exact.centres, identity_centres(x, ids, 3), atol=1e-6)
    ema = CentreBank(3, d, momentum=0.9)
    ema.update(x[:4], ids[:4])
    first = identity_centres(x[:4], ids[:4], 3)
    assert torch.allclose(ema.centres, first, atol=1e-6)  # first sighting initialises
    ema.update(x[4:], ids[4:])
    second = identity_centres(x[4:], ids[4:], 3)
    assert torch.allclose(ema.centres, 0.9 * first + 0.1 * second, atol=1e-6)


# ------------------------------------------------------------------------------------- pair / triplet
@pytest.mark.parametrize("ds,dt", [(4, 4), (8, 5)])
@pytest.mark.parametrize("delta", [1.0, 0.1])
def test_pair_and_triplet_match_loop(ds, dt, delta):
    s, t = _rand(B, ds, seed=11), 3.0 * _rand(B, dt, seed=12)
    assert pair_loss(s, t, delta).item() == pytest.approx(ref_pair(s, t, delta), rel=1e-9)
    assert triplet_loss(s, t, delta).item() == pytest.approx(ref_triplet(s, t, delta), rel=1e-9)


def test_pair_triplet_zero_when_equal_and_scale_invariant():
    s, t = _rand(B, 6, seed=13), _rand(B, 6, seed=14)
    assert pair_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert triplet_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # uniform scaling of the student (or teacher): distances are normalised by the batch mean, cosines are
    # scale-free
    assert pair_loss(s, 7.5 * s).item() == pytest.approx(0.0, abs=1e-12)
    assert pair_loss(0.01 * s, t).item() == pytest.approx(pair_loss(s, t).item(), rel=1e-9)
    assert triplet_loss(4.0 * s, t).item() == pytest.approx(triplet_loss(s, t).item(), rel=1e-9)
    assert pair_loss(s, t).item() > 0 and triplet_loss(s, t).item() > 0


def test_small_batches_give_zero():
    s, t = _rand(2, 4), _rand(2, 4, seed=1)
    assert triplet_loss(s, t).item() == 0.0
    assert pair_loss(s[:1], t[:1]).item() == 0.0


def _finite_grads(fn, *tensors, frozen=()):
    """Backward through ``fn``; every input but the indices in ``frozen`` must get a finite gradient."""
    leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
    out = fn(*leaves)
    out.backward()
    assert torch.isfinite(out).all()
    for i, x in enumerate(leaves):
        if i in frozen:
            assert x.grad is None or torch.isfinite(x.grad).all()
            continue
        assert x.grad is not None and torch.isfinite(x.grad).all(), fn
    return out, leaves


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients_at_coincident_points(dtype):
    s, t = _rand(B, 6, seed=21, dtype=dtype), _rand(B, 6, seed=22, dtype=dtype)
    s[1] = s[0]  # two identical student embeddings
    t[3] = t[2]  # and two identical teacher embeddings
    ids = torch.tensor([0, 0, 1, 1, 2])
    tc = identity_centres(t, ids, 3)
    for fn in (pair_loss, triplet_loss, instance_hard,
               lambda a, b: instance_soft(a, b, None, tc, ids),
               lambda a, b: instance_soft(a, b, tc, tc, ids)):
        _finite_grads(fn, s, t)
        _finite_grads(fn, s, s)  # s == t
    crit = RelationalDistillLoss(6, 6, instance="soft", teacher_centres=tc.float()).to(dtype)
    _finite_grads(lambda a, b: crit(a, b, labels=ids)[0], s, t, frozen=(1,))  # the teacher is detached
    _finite_grads(lambda a, b: crit(a, b, labels=ids)[0], s, s, frozen=(1,))
    # all rows equal: every distance is 0
    same = s[:1].expand(B, -1).contiguous()
    _finite_grads(pair_loss, same, t)
    _finite_grads(triplet_loss, same, t)
    # the coincident pair gets no gradient pulling it apart from the zero-distance (clamped) term
    out, (ls, _) = _finite_grads(lambda a, b: pair_loss(a, b), s, s)
    assert out.item() == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(ls.grad, torch.zeros_like(ls.grad), atol=1e-8)


# ---------------------------------------------------------------------------------------- total loss
def test_relational_loss_combines_terms_with_paper_weights():
    torch.manual_seed(0)
    s, t = torch.randn(B, 8), torch.randn(B, 4)
    logits, labels = torch.randn(B, 3), torch.tensor([0, 1, 2, 0, 1])
    loss = RelationalDistillLoss(8, 4, instance="hard")
    assert loss.lambda_p == 1.0 and loss.lambda_t == 2.0
    assert isinstance(loss.projection, torch.nn.Linear) and loss.projection.weight.shape == (4, 8)
    assert any(p is loss.projection.weight for p in loss.parameters())
    total, parts = loss(s, t, logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    li = instance_hard(loss.projection(s), t)
    expect = ce + li + pair_loss(s, t) + 2.0 * triplet_loss(s, t)
    assert total.item() == pytest.approx(expect.item(), rel=1e-6)
    assert parts["pair"].item() == pytest.approx(pair_loss(s, t).item(), rel=1e-6)
    # no instance term -> no projection, pair/triplet on raw features of different widths
    none = RelationalDistillLoss(8, 4, instance="none")
    assert isinstance(none.projection, torch.nn.Identity)
    tot2, _ = none(s, t, logits, labels)
    assert tot2.item() == pytest.approx((ce + pair_loss(s, t) + 2 * triplet_loss(s, t)).item(), rel=1e-6)
    # soft needs the offline teacher centres
    with pytest.raises(ValueError):
        RelationalDistillLoss(8, 4, instance="soft")
    with pytest.raises(ValueError):
        RelationalDistillLoss(8, 4, instance="hard", projection="identity")


def test_relational_soft_ema_centres_and_teacher_ce():
    torch.manual_seed(1)
    s, t = torch.randn(B, 4), torch.randn(B, 4)
    labels = torch.tensor([0, 1, 0, 1, 2])
    tc = identity_centres(t, labels, 3)
    loss = RelationalDistillLoss(4, 4, instance="soft", teacher_centres=tc, n_classes=3)
    assert isinstance(loss.projection, torch.nn.Identity)
    with pytest.raises(ValueError):
        loss(s, t)  # soft needs the identity labels
    # explicit: no centres yet -> in-batch means
    loss2 = RelationalDistillLoss(4, 4, instance="soft", teacher_centres=tc, student_centres="ema")
    _, p2 = loss2(s, t, labels=labels)
    assert p2["instance"].item() == pytest.approx(instance_soft(s, t, None, tc, labels).item(), rel=1e-6)
    assert torch.allclose(loss2.bank.centres, identity_centres(s, labels, 3), atol=1e-6)
    # second call uses the bank
    s2 = torch.randn(B, 4)
    _, p3 = loss2(s2, t, labels=labels)
    assert p3["instance"].item() == pytest.approx(
        instance_soft(s2, t, identity_centres(s, labels, 3), tc, labels).item(), rel=1e-6)
    # eval mode does not update the bank
    before = loss2.bank.centres.clone()
    loss2.eval()
    loss2(torch.randn(B, 4), t, labels=labels)
    assert torch.equal(before, loss2.bank.centres)
    # soft-target CE against teacher logits
    z, zt = torch.randn(B, 3), torch.randn(B, 3)
    none = RelationalDistillLoss(4, 4, instance="none", lambda_p=0, lambda_t=0)
    tot, _ = none(s, t, logits=z, teacher_logits=zt, temperature=2.0)
    ref = -(torch.softmax(zt / 2, 1) * torch.log_softmax(z / 2, 1)).sum(1).mean() * 4
    assert tot.item() == pytest.approx(ref.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- heads
def test_arcface_logits_by_hand():
    torch.manual_seed(2)
    s_, m = 64.0, 0.5
    head = ArcFaceHead(6, 4, s=s_, m=m)
    x, y = torch.randn(B, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])
    head = head.double()
    logits = head(x, y)
    w = head.weight.detach()
    th = math.cos(math.pi - m)
    for i in range(B):
        for j in range(4):
            c = float((x[i] @ w[j]) / (x[i].norm() * w[j].norm()))
            if j == int(y[i]):
                want = s_ * math.cos(math.acos(c) + m) if c > th else s_ * (c - math.sin(math.pi - m) * m)
            else:
                want = s_ * c
            assert float(logits[i, j].detach()) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert torch.allclose(head(x), s_ * torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(w).T)


def test_arcface_branches_and_gradients():
    head = ArcFaceHead(3, 3, s=10.0, m=0.5).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, dtype=torch.float64))
    # row 0: exactly on its class (cos = 1, sin'(0) would be infinite); row 1: angle ~ 170 deg (cos < th)
    x = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.05, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0])
    logits = head(x, y)
    assert float(logits[0, 0].detach()) == pytest.approx(10 * math.cos(0.5), rel=1e-6)
    c1 = float(-1.0 / math.hypot(1.0, 0.05))
    assert c1 < math.cos(math.pi - 0.5)
    assert float(logits[1, 0].detach()) == pytest.approx(10 * (c1 - math.sin(math.pi - 0.5) * 0.5), rel=1e-9)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    easy = ArcFaceHead(3, 3, s=10.0, m=0.5, easy_margin=True).double()
    with torch.no_grad():
        easy.weight.copy_(torch.eye(3, dtype=torch.float64))
    assert float(easy(x, y)[1, 0].detach()) == pytest.approx(10 * c1, rel=1e-9)


def test_other_heads():
    x = _rand(B, 6).float()
    ns = NormSoftmaxHead(6, 4, s=30.0)
    assert torch.allclose(ns(x), 30 * torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(ns.weight).T)
    sm = SoftmaxHead(6, 4)
    assert torch.allclose(sm(x, torch.zeros(B, dtype=torch.long)), sm.fc(x))
    assert isinstance(build_head("arcface", 6, 4, m=0.3), ArcFaceHead)
    with pytest.raises(ValueError):
        build_head("sphereface", 6, 4)


# ------------------------------------------------------------------------------------ capstone distill
def _ref_row(a, b, kind, m):
    if kind == "mse":
        return sum(float(a[d] - b[d]) ** 2 for d in range(a.shape[0]))
    c = float((a * b).sum()) / (_norm(a) * _norm(b))
    return 1 - c if kind == "cosine" else 1 - math.cos(math.acos(max(-1.0, min(1.0, c))) + m)


@pytest.mark.parametrize("kind", ["mse", "cosine", "margin_cosine"])
def test_pairwise_distill_matches_loop_with_mask(kind):
    masked, clean = _rand(B, 7, seed=31), _rand(B, 7, seed=32)
    m = 0.3
    rows = [_ref_row(clean[i], masked[i], kind, m) for i in range(B)]
    assert pairwise_distill(masked, clean, kind, margin=m).item() == pytest.approx(sum(rows) / B, rel=1e-9)
    sel = torch.tensor([True, False, True, True, False])
    want = sum(r for r, k in zip(rows, sel) if k)
    assert pairwise_distill(masked, clean, kind, m, correct_mask=sel).item() == pytest.approx(want / B, rel=1e-9)
    assert pairwise_distill(masked, clean, kind, m, correct_mask=sel, normalize="selected").item() == \
        pytest.approx(want / 3, rel=1e-9)
    none = torch.zeros(B, dtype=torch.bool)
    leaf = masked.clone().requires_grad_(True)
    z = pairwise_distill(leaf, clean, kind, m, correct_mask=none)
    assert z.item() == 0.0
    z.backward()
    assert torch.all(leaf.grad == 0)


@pytest.mark.parametrize("kind", ["mse", "cosine", "margin_cosine"])
def test_pairwise_distill_finite_gradient_when_identical(kind):
    x = _rand(B, 7, seed=33).float()
    out, _ = _finite_grads(lambda a, b: pairwise_distill(a, b, kind, margin=0.5), x, x)
    want = 1 - math.cos(0.5) if kind == "margin_cosine" else 0.0
    assert out.item() == pytest.approx(want, abs=1e-5)


def test_correctly_classified():
    y = torch.tensor([0, 1, 2])
    a = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]])
    b = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    assert correctly_classified(y, a).tolist() == [True, True, False]
    assert correctly_classified(y, a, b).tolist() == [True, False, False]

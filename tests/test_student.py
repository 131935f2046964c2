"""Student networks: shapes, preprocessing, cost, a deterministic toy distillation run, ONNX parity."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainer.losses.distill import RelationalDistillLoss  # noqa: E402
from trainer.losses.margin import ArcFaceHead  # noqa: E402
from trainer.models.student import (  # noqa: E402
    STUDENTS,
    MobileFaceNet,
    ResNet18Embed,
    build_student,
    count_flops,
    count_params,
    preprocess,
)

DIMS = {"resnet18": 512, "mobilefacenet": 128}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded: deterministic, and far faster than spinning OpenMP threads on a shared CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def students():
    torch.manual_seed(0)
    return {name: build_student(name).eval() for name in STUDENTS}


def test_registry():
    assert set(STUDENTS) == {"resnet18", "mobilefacenet"}
    assert isinstance(build_student("resnet18", embedding_dim=256), ResNet18Embed)
    assert isinstance(build_student("mobilefacenet"), MobileFaceNet)
    with pytest.raises(ValueError):
        build_student("vgg")
    with pytest.raises(ValueError):
        ResNet18Embed(input_size=100)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_output_shapes(students, name):
    m = students[name]
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y = m(x)
        f = m.forward_features(x)
    assert y.shape == (2, DIMS[name]) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert f.shape == (2, 512, 7, 7)
    m.train()
    try:
        assert m(x).shape == (2, DIMS[name])  # batch-norm training path
    finally:
        m.eval()


def test_preprocess():
    img = np.zeros((112, 112, 3), np.uint8)
    img[..., 0] = 255
    img[..., 2] = 128
    x = preprocess(img)
    assert x.shape == (1, 3, 112, 112) and x.dtype == torch.float32
    assert torch.all(x[0, 0] == 1.0) and torch.all(x[0, 1] == -1.0)
    assert torch.allclose(x[0, 2], torch.full((112, 112), (128 / 255 - 0.5) / 0.5), atol=1e-6)
    assert preprocess(np.stack([img, img])).shape == (2, 3, 112, 112)
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 112, 112), np.uint8))


def test_cost(students):
    r, m = students["resnet18"], students["mobilefacenet"]
    assert count_params(r) == 24_025_600
    assert 0.95e6 < count_params(m) < 1.05e6          # paper: 0.99 M
    assert 0.20e9 < count_flops(m) / 2 < 0.24e9        # paper: 221 M MAdds
    assert 2.5e9 < count_flops(r) / 2 < 2.7e9


@pytest.mark.slow
def test_toy_distillation_loss_falls_deterministically():
    """CE + lambda_p L_p + lambda_t L_t of a tiny MobileFaceNet against a fixed random 'teacher' falls."""

    def run(seed: int, steps: int) -> list[float]:
        torch.manual_seed(seed)
        n_cls, per, size = 4, 3, 16
        templates = torch.randn(n_cls, 3, size, size)
        labels = torch.arange(n_cls).repeat_interleave(per)
        images = templates[labels] + 0.3 * torch.randn(len(labels), 3, size, size)
        teacher = torch.nn.Linear(3 * size * size, 16).requires_grad_(False)  # fixed random teacher
        with torch.no_grad():
            t = teacher(images.flatten(1))
        student = MobileFaceNet(embedding_dim=32, input_size=size)
        head = ArcFaceHead(32, n_cls, s=16.0, m=0.2)
        crit = RelationalDistillLoss(32, 16, instance="none")  # paper weights lambda_p=1, lambda_t=2
        opt = torch.optim.SGD([*student.parameters(), *head.parameters(), *crit.parameters()],
                              lr=0.05, momentum=0.9)
        losses = []
        for _ in range(steps):
            s = student(images)
            total, _ = crit(s, t, head(s, labels), labels)
            opt.zero_grad()
            total.backward()
            opt.step()
            losses.append(total.item())
        return losses

    a, b = run(0, 10), run(0, 3)
    assert a[:3] == b, "not deterministic"
    assert all(np.isfinite(a))
    assert np.mean(a[-3:]) < 0.7 * np.mean(a[:3]), a


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy (TorchScript) exporter is requested
@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_onnx_export_matches_torch(students, name, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = students[name]
    # calibrate the BN running statistics (exact batch statistics) so eval-mode outputs are O(1)
    torch.manual_seed(1)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 3, 112, 112))
    m.eval()
    x = torch.randn(2, 3, 112, 112)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(m, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 112, 112)  # a different batch size through the dynamic axis
    (got,) = sess.run(None, {"input": x3.numpy()})
    with torch.no_grad():
        want = m(x3).numpy()
    assert got.shape == (3, DIMS[name])
    scale = np.abs(want).max()
    assert scale > 0.1  # calibrated: outputs are O(1..10), not vanishing
    # raw embeddings to 1e-4 relative to their scale, L2-normalised ones (what matching uses) to 1e-4 absolute
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, scale), (np.abs(got - want).max(), scale)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    assert np.abs(unit(got) - unit(want)).max() <= 1e-4

"""dlib's ResNet is defined once: the layer spec read from the ``.dat`` (``sdk.models.dlib_arch``) that the SDK's ONNX
builder and the trainer's PyTorch port both walk.  A spec the two have never seen (a unit fewer, other weights)
still gives the same descriptors from both -- neither carries its own copy of the topology."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

frm = pytest.importorskip("face_recognition_models")

from sdk.errors import ModelFileError  # noqa: E402
from sdk.models.dlib_arch import (DlibResNetSpec, add_prev_shape, default_dat_path, packaged_spec,  # noqa: E402
                                  resnet_spec)
from sdk.models.dlib_dat import read_dat  # noqa: E402


@pytest.fixture(scope="module")
def spec() -> DlibResNetSpec:
    return resnet_spec(read_dat(default_dat_path()))


def test_spec_of_the_packaged_model(spec):
    assert spec.input_size == 150 and spec.dim == 128 and spec.fc.nin == 256 and not spec.fc.has_bias
    assert (spec.stem.kernel, spec.stem.stride, spec.stem.pad, spec.stem.cout) == ((7, 7), (2, 2), (0, 0), 32)
    assert [u.conv1.cout for u in spec.units] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert [u.down for u in spec.units] == [False] * 3 + [True, False, False, False, True, False, False,
                                                          True, False, False, True]
    shapes = spec.shapes()  # stem conv, stem pool, 14 units, head pool
    assert shapes[:2] == [(32, 72, 72), (32, 35, 35)] and shapes[-2:] == [(256, 2, 2), (256, 1, 1)]
    assert shapes[2 + 10] == (256, 4, 4)  # alevel1's down unit: 3x3 conv (+) 4x4 pool -> 4x4 (add_prev pads)
    assert add_prev_shape((128, 3, 3), (256, 4, 4)) == (256, 4, 4)
    assert sum(c.weight.size + c.bias.size + c.gamma.size + c.beta.size
               for c in [spec.stem] + [x for u in spec.units for x in (u.conv1, u.conv2)]) + spec.fc.weight.size \
        == 5_614_592
    assert np.allclose(spec.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)


def test_geometry_compares_without_weights(spec):
    geo = packaged_spec()
    assert geo == spec and geo.stem.weight is None and spec.stem.weight is not None
    assert geo != dataclasses.replace(geo, units=geo.units[:-1])


def test_not_anet_type_names_the_file(spec):
    net = read_dat(default_dat_path())
    broken = dataclasses.replace(net, layers=net.layers[:-3] + net.layers[-2:])  # drop the last relu
    with pytest.raises(ModelFileError, match="anet_type") as e:
        resnet_spec(broken)
    assert default_dat_path().name in str(e.value)


def _variant(spec: DlibResNetSpec, seed: int) -> DlibResNetSpec:
    """``spec`` without its last unit and with every conv weight randomly rescaled."""
    rng = np.random.default_rng(seed)

    def jitter(c):
        w = (c.weight * rng.uniform(0.8, 1.2, c.weight.shape)).astype(np.float32)
        return dataclasses.replace(c, weight=w)

    units = tuple(dataclasses.replace(u, conv1=jitter(u.conv1), conv2=jitter(u.conv2)) for u in spec.units[:-1])
    return dataclasses.replace(spec, stem=jitter(spec.stem), units=units)


def test_onnx_builder_and_torch_port_walk_the_same_spec(spec):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from sdk.models.dlib_onnx import dlib_spec_to_onnx
    from trainer.models.dlib_resnet import DlibResNet, preprocess

    variant = _variant(spec, 0)
    assert len(variant.units) == 13 and variant.shapes()[-2] == (256, 4, 4)
    chips = np.random.default_rng(1).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    sess = ort.InferenceSession(dlib_spec_to_onnx(variant), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"chips": chips})[0]
    port = DlibResNet.from_spec(variant)
    assert len(port.units) == 13
    with torch.no_grad():
        torch_out = port(preprocess(chips)).numpy()
    assert onnx_out.shape == torch_out.shape == (3, 128)
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-4)
    # and it is a different network from the packaged one
    with torch.no_grad():
        full = DlibResNet.from_spec(spec)(preprocess(chips)).numpy()
    assert np.abs(full - torch_out).max() > 1e-2
    with pytest.raises(ValueError, match="geometry"):
        DlibResNet(variant.geometry()).load_dlib(read_dat(default_dat_path()))

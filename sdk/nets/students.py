"""Student embedding networks (no torchvision): ResNet-18 and MobileFaceNet, and :class:`ArcInput`, the wrapper that puts
their input normalisation inside the module.

Input contract (both students): float32 (N, 3, S, S) RGB, ``x = (rgb / 255 - 0.5) / 0.5`` in [-1, 1], S = 112
by default (aligned face chips) -- :class:`ArcInput` does it inside the module from float RGB in [0, 255] (``trainer.models.student.preprocess``
from uint8 NHWC RGB).  Output: the *raw*
(un-normalised) embedding (N, embedding_dim); L2-normalise it for matching (the margin heads normalise
internally).

``ResNet18Embed`` -- the paper's student, "a ResNet-18 with a single embedding layer on top" (Look Through
Masks, sec. 3.4), in the insightface "IR" form (``iresnet18`` of arcface_torch), which is the usual
ResNet-18 adaptation to 112x112 faces:

* stem: conv3x3 (3->64, stride 1) -> BN -> PReLU, no max-pool (the ImageNet 7x7/2 conv + pool would leave
  a 4x4 map at 112 px);
* 4 stages of 2 IBasicBlocks ([2, 2, 2, 2]), widths 64/128/256/512, each stage starting with stride 2:
  112 -> 56 -> 28 -> 14 -> 7 (output stride 16, final map 7x7 at 112 px);
* IBasicBlock (pre-activation style of insightface): BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN,
  shortcut conv1x1(stride) + BN when the shape changes;
* embedding layer ("E" output): BN2d -> Dropout -> flatten -> FC(512*7*7 -> embedding_dim) -> BN1d
  (the BN1d scale is fixed to 1, as in insightface).
Module names follow insightface's ``IResNet`` (conv1, bn1, prelu, layer1..4, bn2, dropout, fc, features),
so arcface_torch r18 state dicts load with ``strict=True`` when ``embedding_dim=512``.
Initialisation: kaiming-normal (fan_out) convs, BN weight 1 / bias 0 (insightface uses N(0, 0.1) convs).

``MobileFaceNet`` -- Chen et al. 2018, table 1 (expansion t, channels c, repeats n, stride s)::

    112^2 x 3    conv3x3                  -   64   1  2
    56^2 x 64    depthwise conv3x3        -   64   1  1
    56^2 x 64    bottleneck               2   64   5  2
    28^2 x 64    bottleneck               4  128   1  2
    14^2 x 128   bottleneck               2  128   6  1
    14^2 x 128   bottleneck               4  128   1  2
    7^2 x 128    bottleneck               2  128   2  1
    7^2 x 128    conv1x1                  -  512   1  1
    7^2 x 512    linear GDConv7x7         -  512   1  1
    1^2 x 512    linear conv1x1           -  128   1  1

PReLU activations, BN after every conv, bottleneck = conv1x1 expand -> BN -> PReLU -> dw3x3(stride) -> BN ->
PReLU -> conv1x1 project -> BN (linear), residual when stride 1 and widths match; the last linear conv1x1 is
followed by BN1d (as in the reference implementations).  ~1.0 M parameters, ~0.22 GMACs at 112x112.

``input_size`` (multiple of 16) rescales the head of both networks (FC input of ResNet18Embed, GDConv kernel
of MobileFaceNet) -- small sizes are for fast tests only.

Costs at 112x112 (see :func:`trainer.models.student.model_cost`; FLOPs = 2 x multiply-accumulates, counted with
``torch.utils.flop_counter.FlopCounterMode``, convolutions and matmuls only):

    resnet18 (512-d)       24,025,600 params (12.85 M of them in the 25088->512 FC)   5.22 GFLOPs (2.61 GMACs)
    mobilefacenet (128-d)   1,003,136 params                                         0.44 GFLOPs (0.22 GMACs)

(MobileFaceNet paper: 0.99 M params, 221 M MAdds.)
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

__all__ = ["ResNet18Embed", "MobileFaceNet", "STUDENTS", "build_student", "ArcInput", "INPUT_SIZE"]

INPUT_SIZE = 112


def _check_size(input_size: int) -> int:
    if input_size % 16 or input_size < 16:
        raise ValueError(f"input_size must be a positive multiple of 16, got {input_size}")
    return input_size // 16


# ------------------------------------------------------------------------------------------- ResNet-18
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """insightface IR basic block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class ResNet18Embed(nn.Module):
    """ResNet-18 (IR variant, [2, 2, 2, 2] basic blocks) + BN-Dropout-FC-BN embedding layer; see module doc.

    ``forward(x)`` -> (N, embedding_dim) raw embedding; ``forward_features(x)`` -> the (N, 512, S/16, S/16)
    map before the embedding layer."""

    layers = (2, 2, 2, 2)
    widths = (64, 128, 256, 512)

    def __init__(self, embedding_dim: int = 512, input_size: int = INPUT_SIZE, dropout: float = 0.0,
                 zero_init_residual: bool = False):
        super().__init__()
        side = _check_size(input_size)
        self.embedding_dim, self.input_size = embedding_dim, input_size
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for i, (n, w) in enumerate(zip(self.layers, self.widths), start=1):
            blocks = [IBasicBlock(inplanes, w, stride=2)] + [IBasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            inplanes = w
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)
        self.features.weight.requires_grad = False  # insightface: scale of the embedding BN fixed to 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.forward_features(x))
        x = torch.flatten(self.dropout(x), 1)
        return self.features(self.fc(x))


# ---------------------------------------------------------------------------------------- MobileFaceNet
class ConvBlock(nn.Module):
    """conv -> BN (-> PReLU unless ``linear``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1,
                 linear: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.Identity() if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual with PReLU: 1x1 expand (t) -> dw3x3(stride) -> linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBlock(cin, hidden, 1),
            ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden),
            ConvBlock(hidden, cout, 1, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al. 2018), table 1; see module doc.  ``forward(x)`` -> (N, embedding_dim)."""

    # (expansion t, channels c, repeats n, stride s)
    setting = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))

    def __init__(self, embedding_dim: int = 128, input_size: int = INPUT_SIZE):
        super().__init__()
        side = _check_size(input_size)
        self.embedding_dim, self.input_size = embedding_dim, input_size
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        blocks, cin = [], 64
        for t, c, n, s in self.setting:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv_sep = ConvBlock(cin, 512, 1)
        self.gdconv = ConvBlock(512, 512, side, 1, 0, groups=512, linear=True)  # linear GDConv (7x7 at 112)
        self.linear = nn.Conv2d(512, embedding_dim, 1, bias=False)              # linear conv1x1
        self.bn = nn.BatchNorm1d(embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 512, S/16, S/16) map before the GDConv embedding layer."""
        return self.conv_sep(self.blocks(self.conv2_dw(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(self.gdconv(self.forward_features(x)))
        return self.bn(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------------- registry
STUDENTS: Dict[str, Callable[..., nn.Module]] = {"resnet18": ResNet18Embed, "mobilefacenet": MobileFaceNet}


def build_student(name: str, **kw) -> nn.Module:
    """``STUDENTS[name](**kw)``: ``resnet18`` (embedding_dim=512, input_size, dropout) or ``mobilefacenet``
    (embedding_dim=128, input_size)."""
    try:
        return STUDENTS[name](**kw)
    except KeyError:
        raise ValueError(f"unknown student {name!r}; choose from {sorted(STUDENTS)}") from None


class ArcInput(nn.Module):
    """``net(x / 127.5 - 1)``: float RGB [0, 255] NCHW in, the wrapped network's output out.

    Puts the insightface normalisation ``(x / 255 - 0.5) / 0.5`` (:func:`trainer.models.student.preprocess`) inside
    the module, so the training loop feeds every student the same [0, 255] tensors and an exported graph takes
    uint8-range RGB.  ``arch``, ``embedding_dim`` and ``input_size`` (112) describe the student; the wrapped network
    is ``.net`` (its state dict keys carry a ``net.`` prefix here)."""

    def __init__(self, net: nn.Module, arch: str):
        super().__init__()
        self.net, self.arch = net, arch
        self.embedding_dim = int(net.embedding_dim)
        self.input_size = int(getattr(net, "input_size", INPUT_SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float RGB in [0, 255] -> (N, embedding_dim) raw (un-normalised) embeddings."""
        return self.net(x / 127.5 - 1.0)

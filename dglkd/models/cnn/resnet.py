"""CIFAR ResNets (6n+2 layers) as used by the CRD / RepDistiller benchmark."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from dglkd.models.cnn.common import StagedCNN, conv_bn, make_stage, register_cnn


class ResidualBlock(nn.Module):
    """Post-activation basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride),
            conv_bn(out_channels, out_channels, 3, relu=False),
        )
        # A projection only where the shape changes (the "option B" shortcut).
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CifarResNet(StagedCNN):
    """He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (CIFAR variant).

    A 3×3 stem of ``widths[0]`` channels, then three stages of ``(depth - 2) / 6`` basic
    blocks with ``widths[1:]`` channels (strides 1, 2, 2). ``widths = (16, 16, 32, 64)``
    gives resnet20/56; ``(32, 64, 128, 256)`` the "×4" variants of Tian et al., "Contrastive
    Representation Distillation", ICLR 2020.
    """

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, in_channels: int = 3):
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n ≥ 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stages = [
            make_stage(ResidualBlock, widths[i], widths[i + 1], blocks_per_stage, stride)
            for i, stride in enumerate((1, 2, 2))
        ]
        stem = conv_bn(in_channels, widths[0], 3)
        super().__init__(stem, stages, nn.Identity(), widths[3], num_classes)


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
RESNETS: dict[str, tuple[int, tuple[int, ...]]] = {
    **{f"resnet{d}": (d, _THIN) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


def _register(name: str, depth: int, widths: tuple[int, ...]) -> None:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth}, widths {widths}."
    register_cnn(name)(build)


for _name, (_depth, _widths) in RESNETS.items():
    _register(_name, _depth, _widths)

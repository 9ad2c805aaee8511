"""Wide residual networks WRN-d-k for CIFAR."""
from __future__ import annotations

from torch import Tensor, nn

from dglkd.models.cnn.common import StagedCNN, bn_relu, conv_bn, make_stage, register_cnn


class PreActBlock(nn.Module):
    """Pre-activation basic block: x + conv(relu(bn(conv(relu(bn(x)))))).

    Where the shape changes, the shortcut is a 1×1 conv of the *activated* input, as in the
    authors' code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.preact = bn_relu(in_channels)
        self.body = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        )
        self.projection: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.preact(x)
        shortcut = x if self.projection is None else self.projection(act)
        return shortcut + self.body(act)


class WideResNet(StagedCNN):
    """Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

    A 3×3 stem of 16 channels, three stages of ``(depth - 4) / 6`` pre-activation blocks
    with 16k, 32k, 64k channels (strides 1, 2, 2), then BN-ReLU before pooling.
    """

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3) -> None:
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n ≥ 1, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        stages = [
            make_stage(PreActBlock, widths[i], widths[i + 1], blocks_per_stage, stride)
            for i, stride in enumerate((1, 2, 2))
        ]
        stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        super().__init__(stem, stages, bn_relu(widths[3]), widths[3], num_classes)


def _register(depth: int, widen: int) -> None:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels)

    build.__doc__ = f"WRN-{depth}-{widen} for CIFAR."
    register_cnn(f"wrn_{depth}_{widen}")(build)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)

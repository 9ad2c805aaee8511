"""ShuffleNetV2 for CIFAR, as used by the KD benchmarks."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dglkd.errors import DglkdError
from dglkd.models.cnn.common import StagedCNN, conv_bn, register_cnn


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    """Interleave the channels of ``groups`` groups so information crosses branches."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def branch(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1×1 conv-BN-ReLU → 3×3 depthwise conv-BN → 1×1 conv-BN-ReLU."""
    return nn.Sequential(
        conv_bn(in_channels, out_channels, 1),
        conv_bn(out_channels, out_channels, 3, stride, groups=out_channels, relu=False),
        conv_bn(out_channels, out_channels, 1),
    )


class ShuffleUnit(nn.Module):
    """Half the channels pass through untouched, the other half through a branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = branch(channels // 2, channels // 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], dim=1))


class ShuffleDownUnit(nn.Module):
    """Both branches see the whole input at stride 2; their outputs are concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.left = nn.Sequential(
            conv_bn(in_channels, in_channels, 3, 2, groups=in_channels, relu=False),
            conv_bn(in_channels, half, 1),
        )
        self.right = branch(in_channels, half, 2)

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


# net_size → (stage widths, blocks after each stage's down unit, last 1×1 width)
CONFIGS: dict[float, tuple[tuple[int, int, int], tuple[int, int, int], int]] = {
    0.5: ((48, 96, 192), (3, 7, 3), 1024),
    1.0: ((116, 232, 464), (3, 7, 3), 1024),
    1.5: ((176, 352, 704), (3, 7, 3), 1024),
    2.0: ((224, 488, 976), (3, 7, 3), 2048),
}


class ShuffleNetV2(StagedCNN):
    """Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
    Design", ECCV 2018 (the CIFAR variant of the KD benchmarks: a 1×1 stem of 24 channels,
    no stem pooling, three stages each opened by a stride-2 unit, a 1×1 conv, global
    pooling, linear).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, net_size: float = 1.0) -> None:
        widths, blocks, last = CONFIGS[net_size]
        stages = []
        channels = 24
        for width, count in zip(widths, blocks):
            units = [ShuffleDownUnit(channels, width)] + [ShuffleUnit(width) for _ in range(count)]
            stages.append(nn.Sequential(*units))
            channels = width
        stem = conv_bn(in_channels, 24, 1)
        super().__init__(stem, stages, conv_bn(channels, last, 1), last, num_classes)


@register_cnn("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int, net_size: float = 1.0) -> nn.Module:
    """CIFAR ShuffleNetV2 (net size 1 by default, the benchmark's ``ShuffleV2``)."""
    if net_size not in CONFIGS:
        raise DglkdError(
            f"model 'shufflenetv2': net_size must be one of {sorted(CONFIGS)}, got {net_size!r}"
        )
    return ShuffleNetV2(num_classes, in_channels, float(net_size))

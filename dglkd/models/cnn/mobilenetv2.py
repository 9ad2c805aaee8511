"""MobileNetV2 for CIFAR, the half-width variant used as a KD student."""
from __future__ import annotations

from torch import Tensor, nn

from dglkd.errors import DglkdError
from dglkd.models.cnn.common import StagedCNN, conv_bn, register_cnn


class InvertedResidual(nn.Module):
    """1×1 expansion → 3×3 depthwise → linear 1×1 projection, residual when shapes agree.

    The expansion conv is kept even for expansion 1, as in the KD benchmark's model.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.body = nn.Sequential(
            conv_bn(in_channels, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, out_channels, 1, relu=False),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


# (expansion, channels, blocks, stride) per group; ``None`` expansion means "the model's".
# Strides are the CIFAR ones: the second group keeps the resolution.
GROUPS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Groups that make up each stage: a stage ends where the next group changes resolution.
STAGES: list[list[int]] = [[0, 1], [2], [3, 4], [5, 6]]


class MobileNetV2(StagedCNN):
    """Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.

    The CIFAR variant of the KD benchmarks (Tian et al., "Contrastive Representation
    Distillation", ICLR 2020): a stride-2 3×3 stem, seven inverted-residual groups in four
    stages, a 1×1 conv to 1280 channels, global pooling, linear. ``width_mult`` scales every
    width but the last 1280; the benchmark's student uses 0.5.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width_mult: float = 0.5, expansion: int = 6
    ) -> None:
        channels = int(32 * width_mult)
        stem = conv_bn(in_channels, channels, 3, 2)
        groups = []
        for group_expansion, width, blocks, stride in GROUPS:
            out = int(width * width_mult)
            ratio = group_expansion or expansion
            layers = []
            for i in range(blocks):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, ratio))
                channels = out
            groups.append(nn.Sequential(*layers))
        stages = [nn.Sequential(*(groups[g] for g in stage)) for stage in STAGES]
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        super().__init__(stem, stages, conv_bn(channels, last, 1), last, num_classes)


@register_cnn("mobilenetv2")
def mobilenetv2(
    num_classes: int, in_channels: int, width_mult: float = 0.5, expansion: int = 6
) -> nn.Module:
    """CIFAR MobileNetV2, half width by default (the benchmark's ``mobile_half``)."""
    if not isinstance(width_mult, (int, float)) or int(16 * width_mult) < 1:
        raise DglkdError(f"model 'mobilenetv2': width_mult must be ≥ 0.0625, got {width_mult!r}")
    if not isinstance(expansion, int) or expansion < 1:
        raise DglkdError(
            f"model 'mobilenetv2': expansion must be a positive int, got {expansion!r}"
        )
    return MobileNetV2(num_classes, in_channels, width_mult, expansion)

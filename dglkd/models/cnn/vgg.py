"""VGG networks with BatchNorm for CIFAR (no fully connected hidden layers)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from dglkd.models.cnn.common import HalvingMaxPool, StagedCNN, conv_bn, register_cnn


class VGG(StagedCNN):
    """Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015 (CIFAR variant).

    ``config[i]`` lists the widths of stage i's 3×3 conv-BN-ReLU layers. Every stage after
    the first starts with a 2×2 max pool that is skipped on maps of 4×4 or less (a 32×32
    input gives stages at 32, 16, 8, 4, 4 as in the CRD benchmark's VGGs); a linear
    classifier follows global average pooling.
    """

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int, in_channels: int = 3):
        stages = []
        channels = in_channels
        for i, widths in enumerate(config):
            layers: list[nn.Module] = [HalvingMaxPool()] if i else []
            for width in widths:
                # The CIFAR VGGs keep the conv bias in front of BatchNorm.
                layers.append(conv_bn(channels, width, 3, bias=True))
                channels = width
            stages.append(nn.Sequential(*layers))
        super().__init__(nn.Identity(), stages, nn.Identity(), channels, num_classes)


VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _register(name: str, config: list[list[int]]) -> None:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        return VGG(config, num_classes, in_channels)

    build.__doc__ = f"{name.upper()} with BatchNorm for CIFAR."
    register_cnn(name)(build)


for _name, _config in VGG_CONFIGS.items():
    _register(_name, _config)

"""Small plain CNNs for MNIST-sized data: a teacher and a tiny student.

Both are VGG-style stacks (:class:`dglkd.models.cnn.vgg.VGG`) whose widths are options, so
a config can shrink or grow them.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from dglkd.errors import DglkdError
from dglkd.models.cnn.common import register_cnn
from dglkd.models.cnn.vgg import VGG
from dglkd.resources import TRAINING_BYTES_PER_PARAMETER, check_fits

# Python's own objects behind one conv-BN-ReLU layer (four modules, their parameter
# tensors): about 17 kB measured, on the meta device as on the CPU. The meta device saves
# the weights, not these, so a depth alone can exhaust memory before a size is counted.
BYTES_PER_LAYER = 20_000


def plain_cnn(
    name: str, num_classes: int, in_channels: int, widths: Sequence[int], convs_per_stage: int
) -> VGG:
    """One stage per entry of ``widths``, each ``convs_per_stage`` conv-BN-ReLU layers."""
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise DglkdError(f"model {name!r}: widths must be positive ints, got {widths!r}")
    if not isinstance(convs_per_stage, int) or convs_per_stage < 1:
        raise DglkdError(
            f"model {name!r}: convs_per_stage must be a positive int, got {convs_per_stage!r}"
        )
    _check_fits(name, num_classes, in_channels, widths, convs_per_stage)
    return VGG([[w] * convs_per_stage for w in widths], num_classes, in_channels)


def plain_cnn_parameters(num_classes: int, in_channels: int, widths: Sequence[int],
                         convs_per_stage: int) -> int:
    """The parameter count of :func:`plain_cnn`'s network, without building it."""
    parameters, channels = 0, in_channels
    for width in widths:  # 3×3 convs with a bias, BatchNorm's scale and shift
        parameters += (9 * channels + 3) * width + (convs_per_stage - 1) * (9 * width + 3) * width
        channels = width
    return parameters + (channels + 1) * num_classes


def _check_fits(name: str, num_classes: int, in_channels: int, widths: Sequence[int],
                convs_per_stage: int) -> None:
    """Refuse, before a single layer is built, a network whose training state (weights,
    gradients, Adam moments) and layer objects would not fit in this machine's memory."""
    parameters = plain_cnn_parameters(num_classes, in_channels, widths, convs_per_stage)
    layers = len(widths) * convs_per_stage
    check_fits(parameters * TRAINING_BYTES_PER_PARAMETER + layers * BYTES_PER_LAYER,
               f"model {name!r}: training {layers:,} conv layers ({parameters:,} parameters)",
               "lower convs_per_stage or widths")


@register_cnn("cnn_small")
def cnn_small(
    num_classes: int,
    in_channels: int,
    widths: Sequence[int] = (32, 64, 128),
    convs_per_stage: int = 2,
) -> nn.Module:
    """A small teacher CNN (about 0.29 M parameters for 10 classes with the defaults)."""
    return plain_cnn("cnn_small", num_classes, in_channels, widths, convs_per_stage)


@register_cnn("cnn_tiny")
def cnn_tiny(
    num_classes: int,
    in_channels: int,
    widths: Sequence[int] = (8, 16, 32),
    convs_per_stage: int = 1,
) -> nn.Module:
    """A tiny student CNN (about 6 k parameters for 10 classes with the defaults)."""
    return plain_cnn("cnn_tiny", num_classes, in_channels, widths, convs_per_stage)

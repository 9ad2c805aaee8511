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
    return VGG([[w] * convs_per_stage for w in widths], num_classes, in_channels)


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

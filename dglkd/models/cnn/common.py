"""Building blocks shared by every image model: conv units, the staged skeleton, registration.

Every CNN here is *stem → stages → neck → global average pool → linear*. The skeleton names
its hidden features once for all of them: ``stem``, ``stage1``..``stageN`` (the output of
each stage's last block) and ``pool`` (the pooled, flattened penultimate feature), so
:class:`dglkd.models.tap.FeatureTap` finds them without model rewrites. Global average
pooling (instead of a fixed ``AvgPool2d(8)``) lets one network take 8×8, 28×28 and 32×32
inputs.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

from torch import Tensor, nn
import torch.nn.functional as F

from dglkd.errors import DglkdError
from dglkd.models.registry import MODELS

ImageShape = tuple[int, int, int]
CnnBuilder = Callable[..., nn.Module]

CNN_NAMES: list[str] = []
"""The names :func:`register_cnn` registered, in registration order."""


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    relu: bool = True,
    bias: bool = False,
) -> nn.Sequential:
    """Conv ('same' padding) → BatchNorm → optional ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                  groups=groups, bias=bias),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm → ReLU (the pre-activation of wide ResNets)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def make_stage(
    block: Callable[[int, int, int], nn.Module],
    in_channels: int,
    out_channels: int,
    blocks: int,
    stride: int,
) -> nn.Sequential:
    """``blocks`` blocks ``block(in, out, stride)``; the first changes width and resolution."""
    layers = [block(in_channels, out_channels, stride)]
    layers += [block(out_channels, out_channels, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class GlobalPool(nn.Sequential):
    """Global average pooling flattened to (B, C): a module so a forward hook sees it."""

    def __init__(self) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten())


class HalvingMaxPool(nn.Module):
    """2×2 max pooling that leaves maps of ``min_size`` or less alone.

    CIFAR VGGs pool before every stage but the last one when the input is 32×32 (the
    last stages then run at 4×4); the same rule keeps 28×28 and 8×8 inputs from being
    pooled down to nothing.
    """

    def __init__(self, min_size: int = 4) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) <= self.min_size:
            return x
        return F.max_pool2d(x, 2, 2)


class StagedCNN(nn.Module):
    """stem → stages → neck → global average pool → linear classifier.

    ``feature_aliases`` maps ``stem``, ``stage1``..``stageN`` and ``pool`` to module paths;
    ``stage_names`` lists the stage aliases in order (MHGD pairs consecutive stages).
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        neck: nn.Module,
        width: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.pool = GlobalPool()
        self.fc = nn.Linear(width, num_classes)
        self.stage_names = [f"stage{i}" for i in range(1, len(stages) + 1)]
        # ``hidden`` is the penultimate feature on every model (GNNs: the last hidden
        # layer), so a method's default feature exists whatever the networks are.
        self.feature_aliases = {"stem": "stem", "pool": "pool", "hidden": "pool"}
        self.feature_aliases.update({n: f"stages.{i}" for i, n in enumerate(self.stage_names)})
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.pool(self.neck(x)))


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan-out), unit BatchNorm: the usual CIFAR initialisation."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def image_channels(model: str, in_features: object) -> int:
    """The channel count of an image shape (C, H, W); a DglkdError for anything else."""
    shape = tuple(in_features) if isinstance(in_features, (tuple, list)) else (in_features,)
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise DglkdError(
            f"model {model!r}: in_features must be an image shape (C, H, W) of positive "
            f"ints, got {in_features!r}"
        )
    return shape[0]


def register_cnn(name: str) -> Callable[[CnnBuilder], CnnBuilder]:
    """Register ``builder(num_classes, in_channels, **options)`` as model ``name``.

    The registered builder takes the registry's ``(num_classes, in_features, **options)``,
    checks the image shape and the option names (one-line DglkdError naming the bad key)
    and passes the channel count on.
    """

    def decorate(builder: CnnBuilder) -> CnnBuilder:
        signature = inspect.signature(builder)
        allowed = list(signature.parameters)[2:]

        def build(num_classes: int, in_features: ImageShape, **options: object) -> nn.Module:
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise DglkdError(
                    f"model {name!r}: unknown option {unknown[0]!r}; "
                    f"allowed: {', '.join(allowed) or 'none'}"
                )
            return builder(num_classes, image_channels(name, in_features), **options)

        # Callers introspect options from the signature: show the registry's one.
        params = list(signature.parameters.values())
        params[1] = params[1].replace(name="in_features", annotation="ImageShape")
        build.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        build.__name__ = build.__qualname__ = name
        build.__wrapped__ = builder  # type: ignore[attr-defined]  (options' annotations)
        build.__doc__ = builder.__doc__
        MODELS.register(name)(build)
        CNN_NAMES.append(name)
        return build

    return decorate

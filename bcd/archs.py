"""Static facts about the architectures the params can name, shared by the params validation
(:mod:`bcd.params`) and the model configs (:mod:`bcd.mm.configs`): which heads take a backbone,
each other head's own backbone, the one short name of a model in messages. Plain Python: no
torch or OpenMMLab import, nothing else of bcd."""
import importlib.util

#: heads that take a `backbone` key (the others have their own)
BACKBONE_ARCHS = ("pspnet", "deeplabv3plus")

#: the segmentation heads a model spec can name (params ``models.<name>.arch``; those in
#: UNAVAILABLE_ARCHS are refused with the reason)
SEGMENTOR_ARCHS = ("pspnet", "deeplabv3plus", "segformer", "espnet", "mask2former")
#: the detectors of Table V (mmdet's, on ResNets: bcd.mm.detection); every other arch segments
DETECTOR_ARCHS = ("gfl", "retinanet", "cascade_mask_rcnn")
#: detectors that also predict instance masks (mAP^m); the others only boxes
MASK_ARCHS = ("cascade_mask_rcnn",)
#: ResNet depths the detectors build with (mmdet's ResNet)
DETECTOR_DEPTHS = (18, 34, 50, 101, 152)

#: architectures of the paper that this installation cannot build, and why (docs/models.md):
#: Mask2Former's head is MMDetection's (mmseg binds it when mmdet is importable)
UNAVAILABLE_ARCHS = {} if importlib.util.find_spec("mmdet") is not None else {
    "mask2former": (
        "Mask2Former (the paper's ADE20K teacher) needs mmdet (MMDetection), which is not "
        "installed: mmseg 1.2.2's Mask2FormerHead is mmdet's. Install it with "
        "`pip install mmdet==3.3.0` (tools/requirements.txt pins it), or use a PSPNet-R101 "
        "teacher (arch: pspnet, depth: 101)"),
}

#: the backbone of each head that has its own (a key of bcd.mm.configs.BACKBONES)
OWN_BACKBONE = {"segformer": "mit-b0", "espnet": "espnet"}


def task_of(spec) -> str:
    """``detection`` for a detector's model spec, else ``segmentation`` (a dataset entry's
    ``task`` says which its data serve)."""
    return "detection" if spec["arch"] in DETECTOR_ARCHS else "segmentation"


def backbone_name(spec) -> str:
    """The backbone of a model spec (params ``models.<name>``): the head's own, else
    ``backbone`` (default resnet)."""
    return OWN_BACKBONE.get(spec["arch"]) or spec.get("backbone", "resnet")


def describe(spec) -> str:
    """A short name of a model spec for messages, e.g. ``pspnet / resnet-101``."""
    name = backbone_name(spec)
    depth = f"-{spec['depth']}" if name == "resnet" and "depth" in spec else ""
    return f"{spec['arch']} / {name}{depth}"

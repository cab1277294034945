"""Test helpers: a random mmseg batch (images and SegDataSample labels) for one training step,
and a saved randomly initialised teacher."""
import torch


def seg_batch(n: int, size: int, num_classes: int):
    """``(inputs (n, 3, size, size), [SegDataSample])`` with random labels, seeded."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size), generator=g))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                            pad_shape=(size, size)))
        samples.append(s)
    return torch.randn(n, 3, size, size, generator=g), samples


def saved_teacher(directory, spec, num_classes: int, crop=(32, 32)):
    """Build the segmentor of model ``spec`` (random weights) and save it as ``model.pth`` in
    ``directory`` (bcd's plain-weights format); returns the path."""
    from mmseg.registry import MODELS

    from bcd.mm import configs
    from bcd.weights import save_weights

    path = directory / "model.pth"
    save_weights(MODELS.build(configs.segmentor(spec, num_classes, crop)), path, {"kind": "teacher"})
    return path

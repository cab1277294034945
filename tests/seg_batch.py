"""Test helper: a random mmseg batch (images and SegDataSample labels) for one training step."""
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

"""mmseg datasets of bcd: the embedded generated data (:mod:`bcd.data.synthetic`) and CamVid
(:mod:`bcd.data.camvid`).

Config use: ``dict(type='BCDShapesDataset', data_root=root, data_prefix=dict(
img_path='img_dir/train', seg_map_path='ann_dir/train'), pipeline=[...])``.
"""
from __future__ import annotations

import os.path as osp

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from bcd.data import camvid
from bcd.data.synthetic import CLASSES, HINT, PALETTE


@DATASETS.register_module(force=True)  # force: re-importing (tests, reloads) must not raise
class BCDShapesDataset(BaseSegDataset):
    """Generated shapes scenes: ``img_dir/{split}/*.png`` (RGB), ``ann_dir/{split}/*.png`` (labels)."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = False, **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)

    def load_data_list(self) -> list[dict]:
        img_dir = self.data_prefix.get("img_path", "")
        if not self.ann_file and not osp.isdir(img_dir):
            raise FileNotFoundError(f"BCDShapesDataset: image folder {img_dir} is missing; {HINT} "
                                    f"to generate the dataset")
        return super().load_data_list()


@DATASETS.register_module(force=True)
class BCDCamVidDataset(BaseSegDataset):
    """CamVid, SegNet split, 11 classes, void = 255 (:mod:`bcd.data.camvid` prepares it).

    Config use: ``dict(type='BCDCamVidDataset', data_root=root, ann_file='train.txt',
    data_prefix=dict(img_path='images/train', seg_map_path='labels/train'), pipeline=[...])``.
    """

    METAINFO = dict(classes=camvid.CLASSES, palette=camvid.PALETTE)

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = False, **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)

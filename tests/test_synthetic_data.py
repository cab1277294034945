"""The embedded dataset (bcd.data.synthetic): determinism, design properties, folder handling."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

PIL_Image = pytest.importorskip("PIL.Image", reason="Pillow writes the dataset PNGs")

from bcd.data import synthetic as S  # noqa: E402

K = len(S.CLASSES)
H = W = 48
SMALL = dict(num_train=4, num_val=2, num_test=2, height=32)


def _read(path: Path) -> np.ndarray:
    with PIL_Image.open(path) as im:
        return np.asarray(im)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)  # outside counts as background: a border-touching line still erodes
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of ``mask`` (BFS; images here are tiny)."""
    seen = np.zeros_like(mask, bool)
    sizes = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        q, n = deque([(y0, x0)]), 0
        while q:
            y, x = q.popleft()
            n += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        sizes.append(n)
    return sizes


@pytest.fixture(scope="module")
def samples():
    """40 train-split samples at 48x48 straight from render_sample."""
    return [S.render_sample(S.sample_rng(7, "train", i), H, W) for i in range(40)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "shapes"
    return S.generate(root, seed=3, num_train=24, num_val=6, num_test=5, height=H)


# ---------------------------------------------------------------------------------------------
# render_sample
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(64, 64), (48, 48), (96, 96), (40, 72), (16, 16)])
def test_render_sample_shapes_dtypes_and_labels(hw):
    h, w = hw
    for i in range(3):
        img, lab = S.render_sample(np.random.default_rng([0, 0, i]), h, w)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert lab.shape == (h, w) and lab.dtype == np.uint8
        assert lab.max() < K  # no ignore label, no stray values
    assert len(S.PALETTE) == K and all(len(c) == 3 for c in S.PALETTE)
    assert S.CLASSES[0] == "background" and 6 <= K <= 8


def test_render_sample_rejects_small_or_bad_sizes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="height"):
        S.render_sample(rng, 8, 64)
    with pytest.raises(ValueError, match="width"):
        S.render_sample(rng, 64, 15)
    with pytest.raises(ValueError, match="width"):
        S.render_sample(rng, 64, 32.0)


def test_sample_does_not_depend_on_order():
    fwd = [S.render_sample(S.sample_rng(1, "val", i), 32, 32) for i in range(5)]
    rev = [S.render_sample(S.sample_rng(1, "val", i), 32, 32) for i in reversed(range(5))][::-1]
    for (a, la), (b, lb) in zip(fwd, rev):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    # and the splits are different streams
    tr, _ = S.render_sample(S.sample_rng(1, "train", 0), 32, 32)
    assert not np.array_equal(tr, fwd[0][0])


def test_thin_structures_are_one_or_two_pixels_wide(samples):
    """wire/ring: a 3x3-cross erosion removes (almost) all of them; regions survive it."""
    survive = {}
    for c in range(K):
        tot = kept = 0
        for _, lab in samples:
            m = lab == c
            tot += int(m.sum())
            kept += int(_erode_cross(m).sum())
        survive[S.CLASSES[c]] = kept / max(tot, 1)
        assert tot > 0, f"class {S.CLASSES[c]} never appears in 40 samples"
    assert survive["wire"] < 0.05 and survive["ring"] < 0.05, survive
    for name in ("stripes", "checker", "speckle", "plate"):
        assert survive[name] > 0.4, survive  # the check can tell thin from thick


def test_touching_objects_share_long_boundaries(samples):
    """Different non-background region classes are 4-adjacent along long boundaries."""
    long_contacts = 0
    solid = np.array([c in S.SOLID for c in range(K)])
    for _, lab in samples:
        pairs = {}
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            m = (a != b) & solid[a] & solid[b]
            for x, y in zip(a[m], b[m]):
                key = (min(x, y), max(x, y))
                pairs[key] = pairs.get(key, 0) + 1
        long_contacts += any(n >= 12 for n in pairs.values())
    assert long_contacts >= 3 * len(samples) // 4, long_contacts


def test_regions_are_cut_into_pieces(samples):
    """Connectivity: some region class appears as several sizeable pieces in one image."""
    fragmented = 0
    for _, lab in samples:
        for c in S.SOLID:
            if sum(n >= 10 for n in _components(lab == c)) >= 2:
                fragmented += 1
                break
    assert fragmented >= len(samples) // 2, fragmented


def test_classes_are_not_separable_by_colour(samples):
    """A per-pixel colour lookup (8 bins per channel, fitted on 30 images) fails on 10 others."""
    def q(img):
        return (img // 32).astype(np.int64) @ np.array([64, 8, 1])

    table = np.zeros((512, K))
    for img, lab in samples[:30]:
        np.add.at(table, (q(img).ravel(), lab.ravel()), 1)
    pred = table.argmax(1)
    conf = np.zeros((K, K))
    for img, lab in samples[30:]:
        np.add.at(conf, (lab.ravel(), pred[q(img).ravel()]), 1)
    inter = np.diag(conf)
    iou = inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)
    assert iou.mean() < 0.3, iou
    # thin classes in particular are invisible to a colour lookup
    assert iou[S.WIRE] < 0.1 and iou[S.RING] < 0.1, iou


def test_images_are_not_constant_and_vary(samples):
    imgs = np.stack([im for im, _ in samples]).astype(np.float64)
    assert imgs.std(axis=(1, 2, 3)).min() > 5
    assert np.abs(imgs[0] - imgs[1]).mean() > 10


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------
def test_layout_meta_and_every_class_in_train(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    for key, want in dict(seed=3, num_train=24, num_val=6, num_test=5, height=H, width=W,
                          generator_version=S.GENERATOR_VERSION).items():
        assert meta[key] == want
    assert meta["classes"] == list(S.CLASSES) and meta["palette"] == S.PALETTE
    for split, n in (("train", 24), ("val", 6), ("test", 5)):
        for sub in ("img_dir", "ann_dir"):
            assert sorted(p.name for p in (dataset / sub / split).iterdir()) == \
                [f"{i:05d}.png" for i in range(n)]
    assert set(meta["class_pixel_counts"]) == {"train", "val", "test"}
    assert sum(meta["class_pixel_counts"]["test"]) == 5 * H * W
    hist = np.zeros(K, np.int64)
    for p in sorted((dataset / "ann_dir/train").glob("*.png")):
        with PIL_Image.open(p) as im:
            assert im.mode == "L"
            lab = np.asarray(im)
        hist += np.bincount(lab.ravel(), minlength=K)
    assert (hist > 0).all(), dict(zip(S.CLASSES, hist))
    assert meta["class_pixel_counts"]["train"] == hist.tolist()
    assert abs(sum(meta["class_frequencies"]["train"]) - 1) < 1e-4
    img = _read(dataset / "img_dir/train/00000.png")
    assert img.shape == (H, W, 3)
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    a = _files(S.generate(tmp_path / "a", seed=5, **SMALL))
    b = _files(S.generate(tmp_path / "b", seed=5, **SMALL))
    c = _files(S.generate(tmp_path / "c", seed=6, **SMALL))
    assert a == b
    assert set(a) == set(c)
    differing = [k for k in a if k.startswith("img_dir") and a[k] != c[k]]
    assert len(differing) == SMALL["num_train"] + SMALL["num_val"] + SMALL["num_test"]


def test_files_do_not_depend_on_split_sizes(tmp_path):
    small = _files(S.generate(tmp_path / "s", seed=2, num_train=2, num_val=1, num_test=1,
                              height=32))
    big = _files(S.generate(tmp_path / "b", seed=2, num_train=5, num_val=3, num_test=4,
                            height=32))
    common = [k for k in small if k != "meta.json"]
    assert common and all(small[k] == big[k] for k in common)
    img, lab = S.render_sample(S.sample_rng(2, "val", 2), 32, 32)
    assert np.array_equal(_read(tmp_path / "b/img_dir/val/00002.png"), img)
    assert np.array_equal(_read(tmp_path / "b/ann_dir/val/00002.png"), lab)


def test_test_split_is_split_id_2_and_leaves_train_and_val_as_they_were(tmp_path):
    """Adding the test split changes no train/val file: sample i of train/val is still drawn
    from default_rng([seed, 0 or 1, i]) as before the test split existed, whatever num_test."""
    none = S.generate(tmp_path / "none", seed=4, num_train=3, num_val=2, height=32)
    some = S.generate(tmp_path / "some", seed=4, num_train=3, num_val=2, num_test=3, height=32)
    a, b = _files(none), _files(some)
    assert not (none / "img_dir/test").exists() and not (none / "ann_dir/test").exists()
    assert S.check_dataset(none)["counts"] == {"train": 3, "val": 2, "test": 0}
    assert json.loads(a["meta.json"])["num_test"] == 0
    assert {k for k in b if "/test/" in k} == {f"{d}/test/{i:05d}.png"
                                               for d in ("img_dir", "ann_dir") for i in range(3)}
    assert {k: v for k, v in b.items() if "/test/" not in k and k != "meta.json"} == \
        {k: v for k, v in a.items() if k != "meta.json"}
    for split, split_id, n in (("train", 0, 3), ("val", 1, 2), ("test", 2, 3)):
        for i in range(n):
            img, lab = S.render_sample(np.random.default_rng([4, split_id, i]), 32, 32)
            assert np.array_equal(_read(some / f"img_dir/{split}/{i:05d}.png"), img)
            assert np.array_equal(_read(some / f"ann_dir/{split}/{i:05d}.png"), lab)
    # the test images are new scenes, not copies of train or val ones
    test0 = _read(some / "img_dir/test/00000.png")
    others = [*some.glob("img_dir/train/*.png"), *some.glob("img_dir/val/*.png")]
    assert not any(np.array_equal(test0, _read(p)) for p in others)


def test_non_square(tmp_path):
    root = S.generate(tmp_path / "ns", seed=0, num_train=2, num_val=1, height=24, width=40)
    assert _read(root / "img_dir/train/00001.png").shape == (24, 40, 3)
    assert _read(root / "ann_dir/val/00000.png").shape == (24, 40)
    assert S.check_dataset(root)["width"] == 40


def test_idempotent_and_refuses_other_arguments(tmp_path):
    root = S.generate(tmp_path / "d", seed=1, **SMALL)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert S.generate(root, seed=1, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp  # untouched
    with pytest.raises(FileExistsError) as err:
        S.generate(root, seed=2, num_train=4, num_val=3, num_test=2, height=32)
    msg = str(err.value)
    assert str(root) in msg and "seed" in msg and "num_val" in msg and "num_train" not in msg
    assert "num_test" not in msg
    assert json.loads((root / "meta.json").read_text())["seed"] == 1  # still the old one
    S.generate(root, seed=2, num_train=4, num_val=3, num_test=2, height=32, overwrite=True)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 2 and meta["num_val"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_foreign_folder_is_refused_empty_folder_filled(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="meta.json"):
        S.generate(foreign, seed=0, **SMALL)
    with pytest.raises(FileExistsError):
        S.generate(foreign, seed=0, overwrite=True, **SMALL)  # not a dataset: never deleted
    assert (foreign / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    S.check_dataset(S.generate(empty, seed=0, **SMALL))


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real, calls = S._save_png, []

    def flaky(path, array):
        calls.append(path)
        if len(calls) == 5:
            raise RuntimeError("disk full (simulated)")
        real(path, array)

    monkeypatch.setattr(S, "_save_png", flaky)
    root = tmp_path / "data" / "shapes"
    with pytest.raises(RuntimeError, match="simulated"):
        S.generate(root, seed=0, **SMALL)
    assert len(calls) == 5
    assert not root.exists()
    assert list(root.parent.iterdir()) == []  # the temporary sibling is gone too


def test_interrupted_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    root = S.generate(tmp_path / "d", seed=1, **SMALL)
    before = _files(root)

    def broken(path, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "_save_png", broken)
    with pytest.raises(KeyboardInterrupt):
        S.generate(root, seed=9, overwrite=True, **SMALL)
    assert _files(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize("kwargs, name", [
    (dict(height=8), "height"), (dict(width=12), "width"), (dict(num_train=0), "num_train"),
    (dict(num_val=-1), "num_val"), (dict(seed=-3), "seed"), (dict(height=32.5), "height"),
    (dict(num_test=-1), "num_test"), (dict(num_test=True), "num_test"),
    (dict(num_test=2.0), "num_test"),
])
def test_generate_validates_arguments(tmp_path, kwargs, name):
    args = dict(seed=0, num_train=2, num_val=1, height=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        S.generate(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# check_dataset
# ---------------------------------------------------------------------------------------------
def test_check_dataset_ok(dataset):
    info = S.check_dataset(dataset)
    assert info["counts"] == {"train": 24, "val": 6, "test": 5}
    assert info["classes"] == list(S.CLASSES) and info["root"] == str(dataset)


def test_check_dataset_missing_label_and_repair(tmp_path):
    root = S.generate(tmp_path / "d", seed=4, **SMALL)
    (root / "ann_dir/train/00002.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        S.check_dataset(root)
    msg = str(err.value)
    assert "ann_dir/train/00002.png" in msg and "python -m bcd data --params" in msg
    # the same generate() call repairs an incomplete folder
    S.generate(root, seed=4, **SMALL)
    assert S.check_dataset(root)["counts"]["train"] == 4


def test_check_dataset_missing_test_file_or_folder(tmp_path):
    root = S.generate(tmp_path / "d", seed=4, **SMALL)
    (root / "img_dir/test/00001.png").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"1 image file\(s\) missing.*img_dir/test/00001\.png"):
        S.check_dataset(root, deep=False)
    S.generate(root, seed=4, **SMALL)  # same arguments, incomplete: rewritten
    assert S.check_dataset(root)["counts"]["test"] == 2
    shutil.rmtree(root / "ann_dir/test")
    with pytest.raises(FileNotFoundError, match=r"ann_dir/test is missing"):
        S.check_dataset(root)


def _as_before_the_test_split(root: Path) -> None:
    """Make a num_test=0 folder look like one written before the test split existed."""
    meta = json.loads((root / "meta.json").read_text())
    del meta["num_test"]
    for key in ("class_pixel_counts", "class_frequencies"):
        del meta[key]["test"]
    (root / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def test_a_folder_from_before_the_test_split_is_other_arguments(tmp_path):
    root = S.generate(tmp_path / "old", seed=4, num_train=2, num_val=1, height=32)
    _as_before_the_test_split(root)
    assert S.check_dataset(root)["counts"] == {"train": 2, "val": 1, "test": 0}
    with pytest.raises(FileExistsError, match=r"num_test: None there, 3 asked"):
        S.generate(root, seed=4, num_train=2, num_val=1, num_test=3, height=32)
    S.generate(root, seed=4, num_train=2, num_val=1, num_test=3, height=32, overwrite=True)
    assert S.check_dataset(root)["counts"] == {"train": 2, "val": 1, "test": 3}


def test_check_dataset_missing_folder_or_meta(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*python -m bcd data"):
        S.check_dataset(tmp_path / "nope")
    root = S.generate(tmp_path / "d", seed=4, **SMALL)
    (root / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta\.json is missing.*python -m bcd data"):
        S.check_dataset(root)


def test_check_dataset_size_mismatch_and_bad_values(tmp_path):
    root = S.generate(tmp_path / "d", seed=4, **SMALL)
    lab = root / "ann_dir/val/00001.png"
    PIL_Image.fromarray(np.zeros((32, 30), np.uint8)).save(lab)
    with pytest.raises(ValueError, match=r"ann_dir/val/00001\.png.*30x32.*img_dir/val/00001\.png"):
        S.check_dataset(root)
    PIL_Image.fromarray(np.full((32, 32), K, np.uint8)).save(lab)
    with pytest.raises(ValueError, match="holds value"):
        S.check_dataset(root)
    S.check_dataset(root, deep=False)  # counts alone are fine


def test_cli_summary(tmp_path, capsys):
    grid = tmp_path / "grid.png"
    assert S.main(["--out", str(tmp_path / "cli"), "--seed", "0", "--num-train", "3",
                   "--num-val", "1", "--num-test", "2", "--height", "32", "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "3 train + 1 val + 2 test" in out
    assert S.check_dataset(tmp_path / "cli")["counts"] == {"train": 3, "val": 1, "test": 2}
    assert all(name in out for name in S.CLASSES)
    assert _read(grid).ndim == 3


# ---------------------------------------------------------------------------------------------
# The data stage and the split the tables report (val: choices; test: the tables)
# ---------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "params" / "default.yaml"


def test_eval_split_of_the_generated_data():
    pytest.importorskip("mmengine", reason="bcd.mm needs the OpenMMLab stack")
    from bcd import params as P
    from bcd.mm import configs

    assert configs.eval_split(P.data_spec(P.load_params([DEFAULT]))) == "test"

    def data(**shapes):
        return {"dataset": "shapes", "height": 32, "shapes": dict(seed=0, num_train=2,
                                                                   num_val=1, **shapes)}

    assert configs.eval_split(data(num_test=3)) == "test"
    assert configs.eval_split(data(num_test=3, eval_split="val")) == "val"
    assert configs.eval_split(data(eval_split="val")) == "val"
    for shapes in (dict(), dict(num_test=0), dict(eval_split="test")):
        with pytest.raises(ValueError, match=r"num_test is (absent|0).*data\.shapes\.num_test"):
            configs.eval_split(data(**shapes))


def test_data_stage_rebuilds_a_folder_from_before_the_test_split(tmp_path, monkeypatch):
    pytest.importorskip("mmengine", reason="bcd.mm needs the OpenMMLab stack")
    import yaml

    from bcd import cli
    from bcd import params as P
    from bcd.runtime import require_dataset

    monkeypatch.chdir(tmp_path)  # paths.data is relative to the working directory
    overlay = tmp_path / "here.yaml"
    overlay.write_text(yaml.safe_dump({
        "paths": {"data": "data", "runs": "runs", "results": "results"},
        "tables": {"table5": None},   # its keyed dataset's folder would lie inside paths.data
        "data": {"height": 32, "width": 32,
                 "shapes": {"seed": 4, "num_train": 2, "num_val": 1, "num_test": 2}}}))
    args = ["data", "--params", str(DEFAULT), "--params", str(overlay)]
    cfg = P.load_params([DEFAULT, overlay])
    root = S.generate(P.data_dir(cfg), seed=4, num_train=2, num_val=1, height=32)
    _as_before_the_test_split(root)
    before = _files(root)
    with pytest.raises(FileNotFoundError, match=r"holds no test split.*python -m bcd data"):
        # training/evaluation on the stale folder: told to rebuild it
        require_dataset(P.data_job(cfg))
    assert cli.main(args) == 0
    after = _files(root)
    assert S.check_dataset(root)["counts"] == {"train": 2, "val": 1, "test": 2}
    assert {k: v for k, v in after.items() if "/test/" not in k and k != "meta.json"} == \
        {k: v for k, v in before.items() if k != "meta.json"}  # train/val files unchanged
    assert require_dataset(P.data_job(cfg)) == root
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert cli.main(args) == 0  # up to date: untouched
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes


# ---------------------------------------------------------------------------------------------
# mmseg dataset
# ---------------------------------------------------------------------------------------------
def _datasets_module():
    mod = sys.modules.get("bcd.mm.datasets")
    if mod is not None:
        return mod
    # load the file alone: bcd.mm's __init__ pulls in mmrazor and the rest of the stack
    path = Path(S.__file__).resolve().parents[1] / "mm" / "datasets.py"
    spec = importlib.util.spec_from_file_location("_bcd_mm_datasets_standalone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mmseg_dataset_loads_an_item(dataset):
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs
    from mmseg.registry import DATASETS

    mod = _datasets_module()
    assert DATASETS.get("BCDShapesDataset") is not None
    ds = mod.BCDShapesDataset(
        data_root=str(dataset),
        data_prefix=dict(img_path="img_dir/train", seg_map_path="ann_dir/train"),
        pipeline=[dict(type=LoadImageFromFile), dict(type=LoadAnnotations),
                  dict(type=PackSegInputs)])
    assert len(ds) == 24
    assert ds.metainfo["classes"] == S.CLASSES
    item = ds[3]
    assert tuple(item["inputs"].shape) == (3, H, W)
    gt = item["data_samples"].gt_sem_seg.data
    assert tuple(gt.shape) == (1, H, W)
    want = _read(dataset / "ann_dir/train/00003.png")
    assert np.array_equal(gt[0].numpy(), want)  # reduce_zero_label=False: labels as written
    with pytest.raises(FileNotFoundError, match="python -m bcd data"):
        mod.BCDShapesDataset(data_root=str(dataset.parent / "missing"),
                             data_prefix=dict(img_path="img_dir/train", seg_map_path="ann_dir/train"))

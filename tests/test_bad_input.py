"""Malformed inputs, one table: each is refused before any training, with a message naming the
file and the field, and nothing computed before (a prepared dataset, a params file, weights)
is removed or overwritten.

Params problems go through :func:`bcd.params.load_params` (what every stage and the Snakefile
call first); dataset problems through the data stage (:func:`bcd.data.camvid.prepare`) on a
small folder in CamVid's exact layout; checkpoint problems through the checks the train stage
runs before it builds a runner.
"""
import copy
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bcd import params as P
from bcd.data import camvid

from camvid_folders import make_camvid  # noqa: E402  (tests/camvid_folders.py)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "params/default.yaml"
CAMVID = ROOT / "params/camvid.yaml"


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ---- params edits: (cfg) -> None -------------------------------------------------------------
def _set(path, value):
    def edit(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _drop(path):
    def edit(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


def _camvid(edit=None):
    def apply(cfg):
        overlay = yaml.safe_load(CAMVID.read_text())
        cfg.update(P.deep_merge(cfg, overlay))
        if edit:
            edit(cfg)
    return apply


PARAMS_CASES = [
    ("unknown-top-level-key", _set(("epochs",), 3), "epochs", "unknown key"),
    ("unknown-method-key", _set(("methods", "cd", "gamma"), 1.0), "methods.cd.gamma", "unknown key"),
    ("wrong-type-iters", _set(("train", "student", "iters"), "ten"), "train.student.iters",
     "is not of type 'integer'"),
    ("wrong-type-seeds", _set(("seeds",), "0,1,2"), "seeds", "is not of type 'array'"),
    ("negative-weight", _set(("methods", "bd", "loss_weight"), -10.0),
     "methods.bd.loss_weight", "minimum of 0"),
    ("nan-weight", _set(("methods", "cd", "loss_weight"), float("nan")), "methods.cd.loss_weight",
     "not a finite number"),
    ("zero-iterations", _set(("train", "teacher", "iters"), 0), "train.teacher.iters",
     "minimum of 1"),
    ("missing-field", _drop(("train", "student", "lr")), "train.student.lr", "missing (required)"),
    ("unknown-method-name", _set(("runs", "r18-bd", "distill"), ["bd", "crd"]),
     "runs.r18-bd.distill[1]", "unknown method 'crd'"),
    ("unknown-model-name", _set(("runs", "r18", "student"), "pspnet-r34"), "runs.r18.student",
     "unknown model 'pspnet-r34'"),
    ("unknown-architecture", _set(("models", "pspnet-r18", "arch"), "unet"),
     "models.pspnet-r18.arch", "is not one of"),
    ("unknown-dataset", _set(("data", "dataset"), "kitti"), "data.dataset", "is not one of"),
    ("crop-larger-than-images", _camvid(_set(("data", "height"), 200)), "data.height",
     "larger than the CamVid images"),
    ("camvid-sha256-not-a-digest", _camvid(_set(("data", "camvid", "sha256"), "abc123")),
     "data.camvid.sha256", "is not a sha256 digest (64 hex digits)"),
    ("temperature-factor-below-1", _set(("methods", "bd", "temperature", "factor"), 0.9),
     "methods.bd.temperature.factor", "minimum of 1"),
    ("non-finite-weight", _set(("methods", "cd", "loss_weight"), float("inf")),
     "methods.cd.loss_weight", "finite"),
    ("negative-class-weight", _set(("models", "pspnet-r18", "class_weight"), [1.0, -1.0]),
     "models.pspnet-r18.class_weight[1]", "minimum of 0"),
    ("trimap-width-zero", _set(("evaluation", "trimap_widths"), [0, 2]),
     "evaluation.trimap_widths[0]", "minimum of 1"),
]


@pytest.mark.parametrize("edit,keypath,words", [c[1:] for c in PARAMS_CASES],
                         ids=[c[0] for c in PARAMS_CASES])
def test_malformed_params_are_refused(tmp_path, edit, keypath, words):
    cfg = yaml.safe_load(DEFAULT.read_text())
    edit(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = bad.read_bytes()
    with pytest.raises(P.ParamsError) as info:
        P.load_params([bad])
    hits = [line for line in str(info.value).splitlines()
            if line.startswith(f"{bad}: {keypath}")]
    assert hits, f"no message names {bad}: {keypath}:\n{info.value}"
    assert any(words.lower() in line.lower() for line in hits), f"{words!r} not in {hits}"
    assert bad.read_bytes() == before


# ---- dataset edits: (source folder) -> None ------------------------------------------------
def _rm(rel):
    return lambda src: (src / rel).unlink()


def _write_text(rel, text):
    return lambda src: (src / rel).write_text(text)


def _label_value(rel, value):
    def edit(src):
        lab = np.asarray(Image.open(src / rel)).copy()
        lab[2, 3] = value
        Image.fromarray(lab).save(src / rel)
    return edit


def _resize_label(rel):
    def edit(src):
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(src / rel)
    return edit


def _corrupt(rel):
    def edit(src):
        data = (src / rel).read_bytes()
        (src / rel).write_bytes(data[: len(data) // 3])
    return edit


DATASET_CASES = [
    ("missing-dataset-folder", lambda src: __import__("shutil").rmtree(src), "", "does not exist"),
    ("empty-split-list", _write_text("val.txt", ""), "val.txt", "is empty"),
    ("missing-split-list", _rm("test.txt"), "test.txt", "is missing"),
    ("listed-image-missing", _rm("images/train/train_001.jpg"), "images/train/train_001.jpg",
     "is missing"),
    ("image-label-size-mismatch", _resize_label("labels/val/val_000.png"),
     "labels/val/val_000.png", "but its image"),
    ("label-value-beyond-classes", _label_value("labels/train/train_002.png", 11),
     "labels/train/train_002.png", "holds value 11"),
    ("corrupt-image", _corrupt("images/test/test_001.jpg"), "images/test/test_001.jpg",
     "cannot decode"),
]


@pytest.fixture
def prepared(tmp_path):
    """A good source, a data folder already prepared from it, and a copy to break."""
    good = make_camvid(tmp_path / "good")
    dest = camvid.prepare(good, tmp_path / "data" / "camvid")
    bad = make_camvid(tmp_path / "bad")
    return dest, bad


@pytest.mark.parametrize("edit,rel,words", [c[1:] for c in DATASET_CASES],
                         ids=[c[0] for c in DATASET_CASES])
def test_malformed_dataset_is_refused(prepared, edit, rel, words):
    dest, bad = prepared
    before = _tree_digest(dest)
    edit(bad)
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        camvid.prepare(bad, dest)
    message = str(info.value)
    assert str(bad / rel).rstrip("/") in message and words in message, message
    assert _tree_digest(dest) == before, "the data stage touched the prepared folder"
    assert not list(dest.parent.glob(".camvid.tmp*")), "a temporary folder was left behind"


def test_training_refuses_an_unprepared_dataset(tmp_path):
    from bcd.runtime import require_dataset

    cfg = P.load_params([DEFAULT, CAMVID])
    cfg["paths"]["data"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m bcd data"):
        require_dataset(P.data_job(cfg))


# ---- checkpoints ---------------------------------------------------------------------------
def test_teacher_checkpoint_of_the_wrong_architecture_is_refused(tmp_path):
    pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
    from bcd.mm import configs
    from bcd.runtime import check_teacher
    from bcd.weights import save_weights
    from mmseg.registry import MODELS

    cfg = P.load_params([DEFAULT])
    data = P.data_spec(cfg)
    r18 = MODELS.build(configs.segmentor(cfg["models"]["pspnet-r18"], 7, (64, 64)))
    ckpt = tmp_path / "teacher.pth"
    save_weights(r18, ckpt, {"kind": "teacher"})
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=r"teacher\.pth does not fit the model's architecture"):
        check_teacher(cfg["models"]["pspnet-r101"], data, ckpt)
    assert ckpt.read_bytes() == before


class _Payload:  # an arbitrary object: loading it needs full unpickling
    pass


@pytest.mark.parametrize("kind", ["truncated", "pickled-object", "not-a-dict"])
def test_unreadable_or_unsafe_weights_are_refused(tmp_path, kind):
    from bcd.weights import load_weights

    ckpt = tmp_path / "teacher.pth"
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.ones(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
        words = "not a readable weights file"
    elif kind == "pickled-object":
        torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _Payload()}, ckpt)
        words = "unpickle arbitrary Python objects"
    else:
        torch.save([torch.ones(2)], ckpt)
        words = "not a weights file"
    with pytest.raises(ValueError, match=words) as info:
        load_weights(ckpt)
    assert str(ckpt) in str(info.value)
    if kind == "pickled-object":
        assert "--trust-checkpoints" in str(info.value)


def test_trusting_checkpoints_is_an_explicit_option(tmp_path, monkeypatch):
    from bcd.weights import load_weights

    ckpt = tmp_path / "teacher.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _Payload()}, ckpt)
    monkeypatch.setenv("BCD_TRUST_CHECKPOINTS", "1")
    assert torch.equal(load_weights(ckpt)["w"], torch.ones(2))


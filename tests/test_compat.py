"""Each compatibility patch of bcd.mm.compat: the failure without it, and the fix with it."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bcd.weights import UntrustedCheckpointError

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_mmrazor_import_needs_patch_1():
    plain = _py("import mmrazor.models")
    assert plain.returncode != 0, "mmrazor imports without the patch: patch 1 may be obsolete"
    patched = _py("""
        from bcd.mm import compat
        compat.patch_mmrazor_import()
        import mmrazor.models
        from mmrazor.registry import MODELS
        assert MODELS.get('SingleTeacherDistill') is not None
        assert MODELS.get('ChannelWiseDivergence') is not None
    """)
    assert patched.returncode == 0, patched.stderr[-2000:]


def _resume_like_checkpoint(path):
    # what mmengine writes on resume: numpy scalars and its HistoryBuffer in message_hub
    from mmengine.logging import HistoryBuffer

    torch.save({"state_dict": {"w": torch.ones(2)},
                "meta": {"iter": np.int64(3), "hist": HistoryBuffer()}}, path)


def test_checkpoint_loading_needs_patch_2(tmp_path):
    ckpt = tmp_path / "runs" / "iter_3.pth"
    ckpt.parent.mkdir()
    _resume_like_checkpoint(ckpt)
    plain = _py(f"""
        from mmengine.runner.checkpoint import _load_checkpoint
        _load_checkpoint({str(ckpt)!r})
    """)
    assert plain.returncode != 0 and "weights" in plain.stderr.lower()
    patched = _py(f"""
        from bcd.mm import compat
        compat.apply()
        compat.trust_checkpoint_root({str(ckpt.parent)!r})
        from mmengine.runner.checkpoint import _load_checkpoint
        ck = _load_checkpoint({str(ckpt)!r})
        assert int(ck['meta']['iter']) == 3
    """)
    assert patched.returncode == 0, patched.stderr[-2000:]


def test_untrusted_checkpoint_is_refused_with_explanation(tmp_path):
    from bcd.mm import compat

    ckpt = tmp_path / "outside.pth"
    _resume_like_checkpoint(ckpt)
    with pytest.raises(UntrustedCheckpointError, match="BCD_TRUST_CHECKPOINTS"):
        compat.load_checkpoint_file(ckpt)
    plain = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, plain)
    assert torch.equal(compat.load_checkpoint_file(plain)["state_dict"]["w"], torch.ones(2))


def _syncbn_rank(rank, cfg, port, results):
    import torch.distributed as dist

    import bcd.mm  # noqa: F401
    from mmseg.registry import MODELS

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        MODELS.build(cfg).train()(torch.randn(2, 3, 32, 32))
        results.put((rank, "ok"))
    except Exception as err:  # noqa: BLE001
        results.put((rank, f"error: {err}"))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(cfg):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_syncbn_rank, args=(r, cfg, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return [msg for _, msg in sorted(out)]


def test_syncbn_needs_patch_3():
    from bcd.mm import compat, configs

    spec = dict(arch="pspnet", depth=18, base_channels=8)
    cfg = configs.segmentor(spec, num_classes=3, crop_size=(32, 32), norm="SyncBN")
    plain = _run_two_ranks(cfg)
    assert all("GPU" in msg for msg in plain), plain
    assert _run_two_ranks(compat.syncbn_to_bn(cfg)) == ["ok", "ok"]


_SAVER = """
import sys, torch
if sys.argv[2] == "patched":
    from bcd.mm import compat
    compat.patch_checkpoint_saving()
from mmengine.runner import runner
runner.save_checkpoint({"state_dict": {"w": torch.ones(100_000_000)}}, sys.argv[1])
"""


def _kill_during_save(path, mode):
    """Start a process writing a ~400 MB checkpoint; kill -9 it once anything reached the disk."""
    import time

    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), mode])
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size > 0 for p in path.parent.iterdir()):
            proc.kill()
            break
        time.sleep(0.001)
    proc.wait()
    return proc.returncode


def test_checkpoint_saving_needs_patch_4(tmp_path):
    """A run killed while mmengine writes a checkpoint leaves no truncated file under its name."""
    plain_dir, patched_dir = tmp_path / "plain", tmp_path / "patched"
    plain_dir.mkdir()
    patched_dir.mkdir()
    assert _kill_during_save(plain_dir / "iter_10.pth", "plain") == -9, "the write was not interrupted"
    final = plain_dir / "iter_10.pth"
    assert final.exists(), "mmengine no longer writes in place: patch 4 may be obsolete"
    with pytest.raises(Exception):
        torch.load(final, weights_only=True)
    assert _kill_during_save(patched_dir / "iter_10.pth", "patched") == -9
    assert not (patched_dir / "iter_10.pth").exists(), "a partial checkpoint under its final name"

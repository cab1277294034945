"""The example mmrazor config for the paper's Table I pair builds here (checkpoints aside)."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401
from bcd.mm import compat  # noqa: E402

CONFIG = (Path(__file__).resolve().parents[1] / "configs/bcd"
          / "bcd_pspnet-r101-d8_pspnet-r18-d8_8xb1-40k_voc12aug-512x512.py")


def test_example_config_builds_bcd_distiller():
    from mmengine.config import Config
    from mmrazor.registry import MODELS

    cfg = Config.fromfile(str(CONFIG))
    assert cfg.train_cfg.max_iters == 40000 and cfg.model.distiller.distill_losses.loss_cd.loss_weight == 50
    train_set = cfg.train_dataloader.dataset  # VOC aug = VOC 2012 train + SBD aug, as mmseg defines it
    assert train_set.type == "ConcatDataset"
    assert {d.type for d in train_set.datasets} == {"PascalVOCDataset"}
    model_cfg = compat.syncbn_to_bn(cfg.model.to_dict())
    model_cfg["teacher_ckpt"] = None  # the user's fine-tuned teacher; not available here
    algo = MODELS.build(model_cfg)
    assert type(algo).__name__ == "PairedTeacherDistill"
    assert "TrainingSeedHook" in [h["type"] for h in cfg.custom_hooks]
    losses = algo.distiller.distill_losses
    assert type(losses["loss_bd"]).__name__ == "BoundaryDistillLoss" and losses["loss_bd"].loss_weight == 10
    assert type(losses["loss_cd"]).__name__ == "ContextDistillLoss"
    assert algo.distiller.connectors["t_fuse"].frozen
    assert algo.teacher.backbone.depth == 101 and algo.student.backbone.depth == 18
    assert not any(p.requires_grad for p in algo.teacher.parameters())
    fused = algo.distiller.connectors["s_fuse"]([torch.randn(1, c, 16, 16) for c in (64, 128, 256, 512)])
    assert fused.shape == (1, 256, 8, 8)


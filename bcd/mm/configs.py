"""Build mmengine configs (mmseg models, datasets, mmrazor distillers) from bcd's params.

The params describe *what* to run (model specs, distillation terms, schedules); this module says
*how* in OpenMMLab terms, and is the only code that knows mmseg/mmrazor config layouts.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config

from bcd.mm import distributed

FUSED_CHANNELS = 256  # Sec. IV-A: the concatenated features have 256 channels

# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
_RESNET_EXPANSION = {18: 1, 34: 1, 50: 4, 101: 4, 152: 4}
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def backbone_channels(spec: Mapping[str, Any]) -> list[int]:
    """Channels of the backbone levels the distiller records (ResNet stages 1-4)."""
    exp = _RESNET_EXPANSION[spec["depth"]]
    base = spec["base_channels"]
    return [base * exp * m for m in (1, 2, 4, 8)]


def data_preprocessor(crop_size) -> dict:
    return dict(type="mmseg.SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0,
                seg_pad_val=255, size=tuple(crop_size))


ARCHS = ("pspnet", "deeplabv3plus")


def decode_head(spec: Mapping[str, Any], num_classes: int, norm_cfg: dict) -> dict:
    """The decode head of mmseg's ``pspnet_r*-d8`` / ``deeplabv3plus_r*-d8`` configs.

    Widths follow mmseg's ratios: head channels = last stage / 4 (512 for R50/R101, 128 for
    R18); DeepLabV3+'s low-level projection = first stage x 3/16 (48 for R101, 12 for R18).
    """
    c1, _, _, c4 = backbone_channels(spec)
    common = dict(in_channels=c4, in_index=3, channels=c4 // 4, dropout_ratio=0.1,
                  num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
                  loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    if spec["arch"] == "pspnet":
        return dict(type="PSPHead", pool_scales=(1, 2, 3, 6), **common)
    return dict(type="DepthwiseSeparableASPPHead",
                dilations=tuple(spec.get("aspp_dilations", (1, 12, 24, 36))),
                c1_in_channels=c1, c1_channels=max(1, c1 * 3 // 16), **common)


def segmentor(spec: Mapping[str, Any], num_classes: int, crop_size, norm: str = "BN") -> dict:
    """An mmseg ``EncoderDecoder`` config for a model spec of the params (``arch``, ``depth``...).

    PSPNet or DeepLabV3+ on a dilated ResNetV1c (output stride 8) as in mmseg's
    ``pspnet_r*-d8`` / ``deeplabv3plus_r*-d8`` configs, with ``base_channels`` as the width knob
    (64 = the paper's width 1.0, 32 = 0.5).
    """
    if spec["arch"] not in ARCHS:
        raise ValueError(f"unknown architecture {spec['arch']!r} (known: {', '.join(ARCHS)})")
    depth, base = spec["depth"], spec["base_channels"]
    if depth not in _RESNET_EXPANSION:
        raise ValueError(f"unknown ResNet depth {depth} (known: {sorted(_RESNET_EXPANSION)})")
    norm_cfg = dict(type=norm, requires_grad=True)
    c3 = backbone_channels(spec)[2]
    backbone = dict(type="ResNetV1c", depth=depth, stem_channels=base, base_channels=base,
                    num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                    strides=(1, 2, 1, 1), norm_cfg=norm_cfg, norm_eval=False, style="pytorch",
                    contract_dilation=True)
    if spec.get("pretrained"):
        backbone["init_cfg"] = dict(type="Pretrained", checkpoint=spec["pretrained"])
    return dict(
        _scope_="mmseg",
        type="EncoderDecoder",
        data_preprocessor=data_preprocessor(crop_size),
        backbone=backbone,
        decode_head=decode_head(spec, num_classes, norm_cfg),
        auxiliary_head=dict(type="FCNHead", in_channels=c3, in_index=2, channels=c3 // 4,
                            num_convs=1, concat_input=False, dropout_ratio=0.1,
                            num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                             loss_weight=0.4)),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
DATASET_TYPES = {"shapes": "BCDShapesDataset", "camvid": "BCDCamVidDataset"}


def dataset(data: Mapping[str, Any], root: str | Path, split: str, train: bool) -> dict:
    """An mmseg dataset config for one split of the params' dataset.

    Training: (CamVid: random rescale 0.75-1.5 and a random crop of ``data.height x width``),
    random flip. Evaluation: whole images.
    """
    if data["dataset"] not in DATASET_TYPES:
        raise ValueError(f"unknown dataset {data['dataset']!r} (known: {sorted(DATASET_TYPES)})")
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if train and data["dataset"] == "camvid":
        from bcd.data.camvid import SIZE

        pipeline += [dict(type="RandomResize", scale=SIZE, ratio_range=(0.75, 1.5),
                          keep_ratio=True),
                     dict(type="RandomCrop", crop_size=crop_size(data), cat_max_ratio=0.75)]
    if train:
        pipeline.append(dict(type="RandomFlip", prob=0.5))
    pipeline.append(dict(type="PackSegInputs"))
    if data["dataset"] == "camvid":
        return dict(_scope_="mmseg", type=DATASET_TYPES["camvid"], data_root=str(root),
                    ann_file=f"{split}.txt",
                    data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"labels/{split}"),
                    pipeline=pipeline)
    return dict(_scope_="mmseg", type=DATASET_TYPES[data["dataset"]], data_root=str(root),
                data_prefix=dict(img_path=f"img_dir/{split}", seg_map_path=f"ann_dir/{split}"),
                pipeline=pipeline)


def eval_split(data: Mapping[str, Any]) -> str:
    """The split the tables report: CamVid's test split (val is for checkpoint choice only)."""
    if data["dataset"] == "camvid":
        return data["camvid"].get("eval_split", "test")
    return "val"


def crop_size(data: Mapping[str, Any]) -> tuple[int, int]:
    """Training crop ``(H, W)``."""
    return (data["height"], data.get("width") or data["height"])


def eval_size(data: Mapping[str, Any]) -> tuple[int, int]:
    """``(H, W)`` of the evaluated images (where Params/FLOPs are counted)."""
    if data["dataset"] == "camvid":
        from bcd.data.camvid import SIZE

        return (SIZE[1], SIZE[0])
    return crop_size(data)


def num_classes(data: Mapping[str, Any]) -> int:
    if data["dataset"] == "shapes":
        from bcd.data.synthetic import CLASSES
    elif data["dataset"] == "camvid":
        from bcd.data.camvid import CLASSES
    else:
        raise ValueError(f"unknown dataset {data['dataset']!r}")
    return len(CLASSES)


# ----------------------------------------------------------------------------------------------
# Distillation: which recorded tensors feed which loss input
# ----------------------------------------------------------------------------------------------
# A "tap" names a tensor the distiller can hand to a loss. Each loss type lists the taps its
# forward() arguments read; adding a method means one loss class and one line here (plus, for a
# loss with learnable heads, the channel arguments it gets from the model specs in AUTO_ARGS).
TAPS: dict[str, dict] = {
    # Sec. IV-A: all backbone levels fused to 256 channels at 1/8 (BCD)
    "student.fused": dict(from_student=True, recorder="backbone", connector="s_fuse"),
    "teacher.fused": dict(from_student=False, recorder="backbone", connector="t_fuse"),
    # the decode head's classifier output (logit-based methods)
    "student.logits": dict(from_student=True, recorder="logits"),
    "teacher.logits": dict(from_student=False, recorder="logits"),
    # the decode head's last feature map: the classifier's input (feature-based methods)
    "student.head": dict(from_student=True, recorder="head", data_idx=0),
    "teacher.head": dict(from_student=False, recorder="head", data_idx=0),
    # the first backbone level (low-level texture, SSTKD)
    "student.low": dict(from_student=True, recorder="backbone", data_idx=0),
    "teacher.low": dict(from_student=False, recorder="backbone", data_idx=0),
    "labels": dict(from_student=True, recorder="gt", data_idx=1, connector="gt_labels"),
}
_FEATS = dict(preds_S="student.head", preds_T="teacher.head")
_LOGITS = dict(preds_S="student.logits", preds_T="teacher.logits")
LOSS_INPUTS: dict[str, dict[str, str]] = {
    "BoundaryDistillLoss": dict(preds_S="student.fused", preds_T="teacher.fused", gt_seg="labels"),
    "ContextDistillLoss": dict(preds_S="student.fused", preds_T="teacher.fused"),
    "PixelKDLoss": _LOGITS,
    "ChannelWiseDivergence": _LOGITS,  # mmrazor's CWD
    "PairwiseSimilarityLoss": _FEATS,
    "IFVDLoss": dict(_FEATS, gt_labels="labels"),
    "CrossImageRelationLoss": dict(_FEATS, gt_labels="labels"),
    "BPKDLoss": dict(_LOGITS, gt_labels="labels"),
    "TATLoss": _FEATS,
    "SSTKDLoss": dict(preds_S="student.low", preds_T="teacher.low"),
}
BCD_LOSSES = ("BoundaryDistillLoss", "ContextDistillLoss")  # the terms r(t) scales (Eq. 8)


def head_channels(spec: Mapping[str, Any]) -> int:
    """Channels of the decode head's last feature map (the classifier's input)."""
    return backbone_channels(spec)[3] // 4


def _auto_args(ltype: str, student_spec, teacher_spec, num_classes: int) -> dict:
    """Constructor arguments a loss takes from the models (channels, classes)."""
    if ltype in BCD_LOSSES:
        return dict(in_channels=FUSED_CHANNELS)
    if ltype in ("CrossImageRelationLoss", "TATLoss"):
        out = dict(student_channels=head_channels(student_spec),
                   teacher_channels=head_channels(teacher_spec))
        if ltype == "CrossImageRelationLoss":
            out["num_classes"] = num_classes
        return out
    if ltype == "SSTKDLoss":
        return dict(student_channels=backbone_channels(student_spec)[0],
                    teacher_channels=backbone_channels(teacher_spec)[0])
    return {}


def distiller(methods: Mapping[str, Mapping[str, Any]], student_spec, teacher_spec,
              seed: int = 0, num_classes: int | None = None) -> dict:
    """An mmrazor ``ConfigurableDistiller`` config for the named distillation terms."""
    losses, mappings, used = {}, {}, set()
    for name, settings in methods.items():
        settings = dict(settings)
        ltype = settings.pop("type")
        if ltype not in LOSS_INPUTS:
            raise ValueError(f"method {name!r}: unknown loss type {ltype!r} "
                             f"(known: {sorted(LOSS_INPUTS)})")
        for key, value in _auto_args(ltype, student_spec, teacher_spec, num_classes).items():
            settings.setdefault(key, value)
        losses[f"loss_{name}"] = dict(type=ltype, **settings)
        mappings[f"loss_{name}"] = {arg: copy.deepcopy(TAPS[tap])
                                    for arg, tap in LOSS_INPUTS[ltype].items()}
        used.update(LOSS_INPUTS[ltype].values())
    s_rec, t_rec, connectors = {}, {}, {}
    if used & {"student.fused", "teacher.fused", "student.low", "teacher.low"}:
        s_rec["backbone"] = dict(type="ModuleOutputs", source="backbone")
        t_rec["backbone"] = dict(type="ModuleOutputs", source="backbone")
    if used & {"student.fused", "teacher.fused"}:
        connectors["s_fuse"] = dict(type="HierarchicalFusion",
                                    in_channels=backbone_channels(student_spec),
                                    out_channels=FUSED_CHANNELS)
        # Teacher side: a frozen, seeded random projection (docs/method.md, "trivial solution").
        connectors["t_fuse"] = dict(type="HierarchicalFusion",
                                    in_channels=backbone_channels(teacher_spec),
                                    out_channels=FUSED_CHANNELS, frozen=True, init_seed=seed)
    if used & {"student.logits", "teacher.logits"}:
        s_rec["logits"] = dict(type="ModuleOutputs", source="decode_head.conv_seg")
        t_rec["logits"] = dict(type="ModuleOutputs", source="decode_head.conv_seg")
    if used & {"student.head", "teacher.head"}:
        s_rec["head"] = dict(type="ModuleInputs", source="decode_head.conv_seg")
        t_rec["head"] = dict(type="ModuleInputs", source="decode_head.conv_seg")
    if "labels" in used:
        s_rec["gt"] = dict(type="MethodInputs",
                           source="mmseg.models.segmentors.EncoderDecoder.loss")
        connectors["gt_labels"] = dict(type="SegDataSampleLabels")
    return dict(type="ConfigurableDistiller", student_recorders=s_rec, teacher_recorders=t_rec,
                connectors=connectors, distill_losses=losses, loss_forward_mappings=mappings)


# ----------------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------------
def runner_config(*, model: dict, data: Mapping[str, Any], data_root, train: Mapping[str, Any],
                  work_dir, seed: int, log_file, scope: str, extra_hooks=(),
                  resume: bool = False, launcher: str = "none") -> Config:
    """A complete mmengine Runner config: SGD + poly LR (Sec. V-B), IoU on the val split.

    ``launcher='pytorch'``: one process per GPU (or CPU share) started by torchrun
    (:mod:`bcd.mm.distributed`); ``train['batch_size']`` is per process, as in mmseg.
    """
    iters = int(train["iters"])
    val_interval = int(train.get("val_interval") or iters)
    ckpt_interval = int(train.get("checkpoint_interval") or val_interval)
    loader = dict(num_workers=0, persistent_workers=False)
    cfg = dict(
        default_scope=scope,
        custom_imports=dict(imports=["bcd.mm"], allow_failed_imports=False),
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(batch_size=int(train["batch_size"]), **loader,
                              sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=dataset(data, data_root, "train", train=True)),
        val_dataloader=dict(batch_size=8, **loader,
                            sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=dataset(data, data_root, "val", train=False)),
        val_evaluator=dict(type="mmseg.PerClassIoUMetric", iou_metrics=["mIoU"]),
        # bcd.mm.resume: mmengine's loop + RNG states in checkpoints = exact resume after a kill
        train_cfg=dict(type="ResumableIterBasedTrainLoop", max_iters=iters,
                       val_interval=val_interval),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper",
                           optimizer=dict(type="SGD", lr=train["lr"], momentum=train["momentum"],
                                          weight_decay=train["weight_decay"])),
        param_scheduler=[dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=iters,
                              by_epoch=False)],
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, min(50, iters // 4)),
                        log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # keep 2: mmengine deletes the oldest checkpoint *before* writing the next one, so
            # a kill during that write must still find the previous one complete.
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=ckpt_interval,
                            max_keep_ckpts=2, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        custom_hooks=[dict(type="NonFiniteLossHook"), dict(type="RNGStateHook"),
                      dict(type="TrainLogHook", out_file=str(log_file),
                           interval=max(1, iters // 100)), *extra_hooks],
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend=distributed.backend())),
        randomness=dict(seed=seed),
        resume=bool(resume),  # from work_dir/last_checkpoint (bcd.train decides when)
        log_level="WARNING",
        log_processor=dict(by_epoch=False),
        vis_backends=[dict(type="LocalVisBackend")],
        visualizer=dict(type="mmseg.SegLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")],
                        name="visualizer"),
    )
    if launcher != "none":
        _distributed(cfg, launcher)
    return Config(cfg)


def _distributed(cfg: dict, launcher: str) -> None:
    """Multi-process settings (bcd.mm.distributed): DDP, SyncBN on GPUs or BN statistics
    averaged over the ranks on CPU, a different augmentation seed per rank (the sampler's seed
    is shared, so the ranks' shards stay disjoint)."""
    import torch

    cfg["launcher"] = launcher
    cfg["model_wrapper_cfg"] = dict(type="BCDDistributedDataParallel", broadcast_buffers=False,
                                    find_unused_parameters=True)
    cfg["randomness"]["diff_rank_seed"] = True
    if torch.cuda.is_available():
        cfg["sync_bn"] = "torch"
    else:
        cfg["custom_hooks"].append(dict(type="SyncNormBuffersHook"))


def teacher_config(*, spec, data, data_root, train, work_dir, seed, log_file,
                   resume: bool = False, launcher: str = "none") -> Config:
    model = segmentor(spec, num_classes(data), crop_size(data))
    return runner_config(model=model, data=data, data_root=data_root, train=train,
                         work_dir=work_dir, seed=seed, log_file=log_file, scope="mmseg",
                         resume=resume, launcher=launcher)


def distill_config(*, student_spec, teacher_spec, teacher_ckpt, methods, decay_schedule: bool,
                   data, data_root, train, work_dir, seed, log_file,
                   resume: bool = False, launcher: str = "none") -> Config:
    """Student run: plain mmseg training when ``methods`` is empty, else mmrazor distillation."""
    nc, crop = num_classes(data), crop_size(data)
    student = segmentor(student_spec, nc, crop)
    if not methods:
        return runner_config(model=student, data=data, data_root=data_root, train=train,
                             work_dir=work_dir, seed=seed, log_file=log_file, scope="mmseg",
                             resume=resume, launcher=launcher)
    teacher = segmentor(teacher_spec, nc, crop)
    model = dict(
        _scope_="mmrazor",
        type="SingleTeacherDistill",
        data_preprocessor=data_preprocessor(crop),
        architecture=student,
        teacher=teacher,
        teacher_ckpt=str(teacher_ckpt),
        distiller=distiller(methods, student_spec, teacher_spec, seed=seed, num_classes=nc),
    )
    hooks = [dict(type="DistillScalarsHook")]
    # r(t) scales BCD's own terms (Eq. 8); a joint method keeps its constant weight.
    decayed = [f"loss_{name}" for name, m in methods.items() if m["type"] in BCD_LOSSES]
    if decay_schedule and decayed:
        hooks.append(dict(type="DistillLossDecayHook", loss_names=decayed))
    return runner_config(model=model, data=data, data_root=data_root, train=train,
                         work_dir=work_dir, seed=seed, log_file=log_file, scope="mmrazor",
                         extra_hooks=hooks, resume=resume, launcher=launcher)

# BCD for the paper's Table I pair: PSPNet-R101 (teacher) -> PSPNet-R18 (width 1.0), Pascal VOC
# 2012 aug, 512x512 crops, 40k iterations, batch 8 (8 GPUs x 1), SGD + poly (lr 0.01, power 0.9),
# alpha = 10, beta = 50, adaptive temperature, r(t) weight decay.  A plain mmrazor config: copy it,
# change the recorders/connectors for other backbones, and run it with mmrazor's/mmengine's tools:
#     python -m mmengine ... / tools/train.py <this file>   (needs `bcd` importable)
# The teacher checkpoint is your fine-tuned PSPNet-R101 (untrusted input: bcd loads it as weights
# only). Backbones start from open-mmlab:// ImageNet weights, which need network access.
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12_aug.py',
    'mmseg::_base_/schedules/schedule_40k.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['bcd.mm'], allow_failed_imports=False)

crop_size = (512, 512)
num_classes = 21
norm_cfg = dict(type='SyncBN', requires_grad=True)  # bcd.mm.compat.syncbn_to_bn for CPU runs
data_preprocessor = dict(
    type='mmseg.SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size)


def pspnet(depth, base_channels, pretrained):
    expansion = 1 if depth < 50 else 4
    c3, c4 = base_channels * 4 * expansion, base_channels * 8 * expansion
    return dict(
        _scope_='mmseg', type='EncoderDecoder', data_preprocessor=data_preprocessor,
        backbone=dict(type='ResNetV1c',
                      init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None, depth=depth, stem_channels=base_channels,
                      base_channels=base_channels, num_stages=4, out_indices=(0, 1, 2, 3),
                      dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=norm_cfg,
                      norm_eval=False, style='pytorch', contract_dilation=True),
        decode_head=dict(type='PSPHead', in_channels=c4, in_index=3, channels=c4 // 4,
                         pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=num_classes,
                         norm_cfg=norm_cfg, align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                          loss_weight=1.0)),
        auxiliary_head=dict(type='FCNHead', in_channels=c3, in_index=2, channels=c3 // 4,
                            num_convs=1, concat_input=False, dropout_ratio=0.1,
                            num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
                            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                             loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


# ResNet stage channels (levels 1-4) of the recorded backbone outputs
student_levels = [64, 128, 256, 512]  # R18, width 1.0
teacher_levels = [256, 512, 1024, 2048]  # R101
temperature = dict(init=1.0, factor=1.05, threshold=0.5)

model = dict(
    _scope_='mmrazor',
    # mmrazor's SingleTeacherDistill with the whole teacher in eval mode (no dropout) and the
    # student initialised as a plain run of the same seed (bcd.mm.distill)
    type='PairedTeacherDistill',
    data_preprocessor=data_preprocessor,
    architecture=pspnet(18, 64, 'open-mmlab://resnet18_v1c'),
    teacher=pspnet(101, 64, None),
    teacher_ckpt='work_dirs/pspnet_r101-d8_voc12aug/model.pth',  # your fine-tuned teacher
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(
            backbone=dict(type='ModuleOutputs', source='backbone'),
            gt=dict(type='MethodInputs', source='mmseg.models.segmentors.EncoderDecoder.loss')),
        teacher_recorders=dict(backbone=dict(type='ModuleOutputs', source='backbone')),
        connectors=dict(
            # Sec. IV-A: every level -> 1x1 conv -> 1/8 of the input -> concat -> 3x3 conv -> 256
            s_fuse=dict(type='HierarchicalFusion', in_channels=student_levels, out_channels=256),
            t_fuse=dict(type='HierarchicalFusion', in_channels=teacher_levels, out_channels=256,
                        frozen=True, init_seed=0),
            gt_labels=dict(type='SegDataSampleLabels')),
        distill_losses=dict(
            loss_bd=dict(type='BoundaryDistillLoss', in_channels=256, radius=4, loss_weight=10.0,
                         teacher_probe_weight=1.0, temperature=temperature),  # Eq. 2-3, alpha
            loss_cd=dict(type='ContextDistillLoss', in_channels=256, loss_weight=50.0,
                         align='conv1x1', temperature=temperature)),  # Eq. 4-5, beta
        loss_forward_mappings=dict(
            loss_bd=dict(
                preds_S=dict(from_student=True, recorder='backbone', connector='s_fuse'),
                preds_T=dict(from_student=False, recorder='backbone', connector='t_fuse'),
                gt_seg=dict(from_student=True, recorder='gt', data_idx=1,
                            connector='gt_labels')),
            loss_cd=dict(
                preds_S=dict(from_student=True, recorder='backbone', connector='s_fuse'),
                preds_T=dict(from_student=False, recorder='backbone', connector='t_fuse')))))

train_dataloader = dict(batch_size=1)  # x 8 GPUs = batch 8
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005))
custom_hooks = [
    dict(type='DistillLossDecayHook', loss_names=['loss_bd', 'loss_cd']),  # r(t), Eq. 7-8
    dict(type='DistillScalarsHook'),
    dict(type='NonFiniteLossHook'),
    dict(type='TrainingSeedHook'),  # training draws start from the seed's stream (bcd.mm.distill)
]
find_unused_parameters = True

"""Table V's detectors through mmrazor: each one distils with BCD (BD + CD on the fused backbone
levels), PKD, FGD (FPN), LD (GFL's box distributions) and CrossKD (the dense head) for two
iterations; the ground truth BD's probe reads; methods that do not apply to a detector (or to a
segmentor) are refused by name; the COCO-format data."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet", reason="the detection stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd.data import coco  # noqa: E402
from bcd.mm import configs, detection  # noqa: E402

METHODS = {"bd": {"type": "BoundaryDistillLoss"}, "cd": {"type": "ContextDistillLoss"},
           "pkd": {"type": "PKDLoss"}}
PAIRS = {"gfl": (18, 50), "retinanet": (50, 101), "cascade_mask_rcnn": (50, 101)}


def _spec(arch, depth):
    return dict(arch=arch, depth=depth, base_channels=16, neck_channels=32,
                proposals=dict(rpn=64, rois=32))


def _algorithm(arch, methods=METHODS, num_classes=3):
    from mmengine.config import ConfigDict
    from mmrazor.registry import MODELS

    s_spec, t_spec = (_spec(arch, d) for d in PAIRS[arch])
    model = dict(_scope_="mmrazor", type="PairedTeacherDistill",
                 data_preprocessor=detection.data_preprocessor(detection.has_masks(s_spec)),
                 architecture=detection.detector(s_spec, num_classes),
                 teacher=detection.detector(t_spec, num_classes), teacher_ckpt=None,
                 distiller=configs.distiller(methods, s_spec, t_spec, seed=0,
                                             num_classes=num_classes))
    return MODELS.build(ConfigDict(model))


def _batch(arch, num_classes=3):
    from mmdet.testing import demo_mm_inputs

    torch.manual_seed(0)
    batch = demo_mm_inputs(batch_size=2, image_shapes=(3, 64, 96), num_items=[3, 2],
                           num_classes=num_classes, with_mask=arch in detection.MASK_ARCHS)
    # the first image flipped, as RandomFlip leaves half of the training images (mmdet 3.3's
    # tensor-mode Cascade forward failed on those: the teacher must not run it)
    batch["data_samples"][0].set_metainfo(dict(flip=True, flip_direction="horizontal"))
    return batch


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_each_detector_distils_with_bcd_and_pkd_for_two_iterations(arch):
    torch.manual_seed(0)
    algo = _algorithm(arch)
    algo.train()
    optim = torch.optim.SGD([p for p in algo.parameters() if p.requires_grad], lr=1e-3)
    teacher_before = {k: v.clone() for k, v in algo.teacher.state_dict().items()}
    for _ in range(2):
        data = algo.data_preprocessor(_batch(arch), True)
        losses = algo(**data, mode="loss")
        distill = {k: v for k, v in losses.items() if k.startswith("distill.")}
        assert set(distill) == {"distill.loss_bd", "distill.loss_cd", "distill.loss_pkd"}
        assert all(torch.isfinite(v) and v > 0 for v in distill.values()), distill
        parsed, _ = algo.parse_losses(losses)
        optim.zero_grad()
        parsed.backward()
        assert all(p.grad is None for p in algo.teacher.parameters())
        optim.step()
    assert all(torch.equal(v, algo.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(not m.training for m in algo.teacher.modules())
    fuse = algo.distiller.connectors["s_fuse"]
    assert fuse.lateral_convs[0].weight.grad is not None  # BD/CD train the student's connector


#: Table V's comparison methods on the detectors (docs/baselines.md): each applicable pair
#: distils; LD is not applicable to RetinaNet / Cascade Mask R-CNN (box deltas)
KD = {"fgd": {"type": "FGDLoss"}, "ld": {"type": "LDLoss"}, "crosskd": {"type": "CrossKDLoss"}}
APPLIES = [(a, m) for a in sorted(PAIRS) for m in sorted(KD)
           if not (m == "ld" and a != "gfl")]


@pytest.mark.parametrize("arch,method", APPLIES)
def test_each_detector_distils_with_the_table5_methods_for_two_iterations(arch, method):
    torch.manual_seed(0)
    algo = _algorithm(arch, {method: KD[method]})
    algo.train()
    own = [p for p in algo.distiller.parameters() if p.requires_grad]
    optim = torch.optim.SGD([p for p in algo.parameters() if p.requires_grad], lr=1e-3)
    teacher_before = {k: v.clone() for k, v in algo.teacher.state_dict().items()}
    # the teacher head handed to CrossKD is no submodule of the distiller: nothing duplicated
    assert not any(k.startswith("distiller.") and "head" in k.split(".")[-2:-1]
                   for k in algo.state_dict())
    assert not {id(p) for p in algo.distiller.parameters()} & {
        id(p) for p in algo.teacher.parameters()}
    head = getattr(algo.student, configs.taps(_spec(arch, PAIRS[arch][0])).dense_head)
    for _ in range(2):
        data = algo.data_preprocessor(_batch(arch), True)
        losses = algo(**data, mode="loss")
        distill = {k: v for k, v in losses.items() if k.startswith("distill.")}
        assert set(distill) == {f"distill.loss_{method}"}
        assert all(torch.isfinite(v) and v > 0 for v in distill.values()), distill
        optim.zero_grad()
        distill[f"distill.loss_{method}"].backward(retain_graph=True)  # the term alone
        assert all(p.grad is None for p in algo.teacher.parameters())
        # it reaches the student: FGD its FPN, LD / CrossKD its dense head (CrossKD on the
        # RPN: the FPN, whose outputs go through the teacher's whole one-conv RPN head)
        on_fpn = method == "fgd" or (method == "crosskd" and arch == "cascade_mask_rcnn")
        reached = algo.student.neck if on_fpn else head
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reached.parameters())
        # the loss's own learnable parts (FGD's align/context blocks per level) train
        assert all(p.grad is not None for p in own)
        optim.zero_grad()
        parsed, _ = algo.parse_losses(losses)
        parsed.backward()
        optim.step()
    assert all(torch.equal(v, algo.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(not m.training for m in algo.teacher.modules())
    if method == "fgd":
        levels = algo.distiller.distill_losses["loss_fgd"].levels
        assert len(levels) == 5 and all(lv.context_S.value_out.weight.grad.abs().sum() > 0
                                        for lv in levels)
    else:
        assert not own  # LD and CrossKD have no learnable parts


@pytest.mark.parametrize("arch", ["retinanet", "cascade_mask_rcnn"])
def test_ld_is_refused_on_heads_without_box_distributions(arch):
    s, t = (_spec(arch, d) for d in PAIRS[arch])
    with pytest.raises(ValueError, match=r"method 'ld' \(LDLoss\) is not applicable to .*"
                                         r"regresses box deltas"):
        configs.distiller({"ld": KD["ld"]}, s, t, num_classes=3)


def test_dense_head_facts_match_the_built_detectors():
    from mmdet.registry import MODELS

    detection.require_mmdet()
    for arch in PAIRS:
        spec = _spec(arch, PAIRS[arch][0])
        t = configs.taps(spec)
        from mmengine.config import ConfigDict

        model = MODELS.build(ConfigDict(detection.detector(spec, 3)))
        head = getattr(model, t.dense_head)
        assert type(head).__module__ + "." + type(head).__name__ == t.head_class
        assert head.num_base_priors == t.num_anchors
        assert getattr(head, "reg_max", None) == t.reg_max
        assert model.neck.num_outs == t.neck_levels
    cfg = configs.distiller({"crosskd": KD["crosskd"], "fgd": KD["fgd"]},
                            _spec("retinanet", 50), _spec("retinanet", 101), num_classes=3)
    assert cfg["distill_losses"]["loss_crosskd"] == dict(type="CrossKDLoss", num_anchors=9,
                                                         reg_max=None)
    assert cfg["distill_losses"]["loss_fgd"]["num_levels"] == 5
    assert cfg["teacher_recorders"]["head_out"]["source"].endswith("RetinaHead.forward")


def test_detector_configs_follow_the_spec():
    spec = dict(arch="gfl", depth=18, base_channels=16)
    m = detection.detector(spec, num_classes=5)
    assert m["backbone"]["depth"] == 18 and m["backbone"]["base_channels"] == 16
    assert m["backbone"]["frozen_stages"] == -1 and m["backbone"]["norm_eval"] is False
    assert m["neck"]["in_channels"] == [16, 32, 64, 128] and m["neck"]["out_channels"] == 64
    assert m["bbox_head"]["num_classes"] == 5
    paper = detection.detector(dict(arch="gfl", depth=50, base_channels=64,
                                    pretrained="torchvision://resnet50"), 80)
    assert paper["neck"]["out_channels"] == 256 and paper["backbone"]["frozen_stages"] == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        detection.detector(dict(arch="gfl", depth=18, base_channels=16, neck_channels=40), 3)
    with pytest.raises(ValueError, match="unknown detector"):
        detection.detector(dict(arch="yolo", depth=18), 3)


def test_methods_that_do_not_apply_are_refused_by_name():
    s, t = _spec("gfl", 18), _spec("gfl", 50)
    with pytest.raises(ValueError, match="is a detector"):
        configs.distiller({"kd": {"type": "PixelKDLoss"}}, s, t, num_classes=3)
    with pytest.raises(ValueError, match="is a detector"):
        configs.distiller({"bd": {"type": "BoundaryDistillLoss", "teacher": "prediction"}},
                          s, t, num_classes=3)
    seg = dict(arch="pspnet", depth=18, base_channels=16)
    with pytest.raises(ValueError, match="is a segmentor"):
        configs.distiller({"pkd": {"type": "PKDLoss"}}, seg, dict(seg, depth=50), num_classes=3)
    with pytest.raises(ValueError, match="same neck_channels"):
        configs.distiller({"pkd": {"type": "PKDLoss"}}, s, dict(t, neck_channels=64),
                          num_classes=3)
    # FGD aligns the widths (1x1 conv); CrossKD needs one head type and width
    wide = configs.distiller({"fgd": {"type": "FGDLoss"}}, s, dict(t, neck_channels=64),
                             num_classes=3)
    assert wide["distill_losses"]["loss_fgd"]["teacher_channels"] == 64
    with pytest.raises(ValueError, match=r"method 'x' \(CrossKDLoss\) runs the student's head "
                                         "features through the teacher's head"):
        configs.distiller({"x": {"type": "CrossKDLoss"}}, s, dict(t, neck_channels=64),
                          num_classes=3)
    with pytest.raises(ValueError, match="CrossKDLoss.*one head type"):
        configs.distiller({"x": {"type": "CrossKDLoss"}}, s, _spec("retinanet", 50),
                          num_classes=3)
    for ltype in ("FGDLoss", "LDLoss", "CrossKDLoss"):
        with pytest.raises(ValueError, match=rf"method 'x' \({ltype}\) reads .* is a segmentor"):
            configs.distiller({"x": {"type": ltype}}, seg, dict(seg, depth=50), num_classes=3)


def test_bd_probe_labels_are_the_instances_drawn_smallest_on_top():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    sample = DetDataSample(metainfo=dict(batch_input_shape=(8, 10), pad_shape=(8, 10)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[0.0, 0.0, 6.0, 6.0], [4.0, 4.0, 8.0, 7.0]]),
        labels=torch.tensor([2, 0]))
    got = detection.instance_label_map([sample])
    want = torch.zeros(1, 8, 10, dtype=torch.long)
    want[0, 0:6, 0:6] = 1
    want[0, 4:7, 4:8] = 2  # the smaller box is drawn last
    assert torch.equal(got, want)
    classes = detection.instance_label_map([sample], mode="class")
    assert classes[0, 0, 0] == 3 and classes[0, 5, 5] == 1
    with pytest.raises(ValueError, match="mode"):
        detection.instance_label_map([sample], mode="semantic")


def test_object_scenes_hold_whole_separate_objects():
    from bcd.data import synthetic

    counts, classes = [], set()
    for i in range(40):
        img, objects = synthetic.render_objects(synthetic.sample_rng(5, "train", i), 48, 48,
                                                min_area=8)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
        counts.append(len(objects))
        boxes = []
        for cls, mask in objects:
            classes.add(cls)
            assert 1 <= cls < len(synthetic.CLASSES) and mask.sum() >= 8
            ys, xs = np.nonzero(mask)
            boxes.append((ys.min(), xs.min(), ys.max() + 1, xs.max() + 1))
        for j, a in enumerate(objects):  # the visible masks never share a pixel
            for b in objects[j + 1:]:
                assert not (a[1] & b[1]).any()
    assert 1 <= min(counts) and max(counts) <= 4 and np.mean(counts) >= 2
    assert classes == set(range(1, len(synthetic.CLASSES)))   # every class appears as an object
    again = synthetic.render_objects(synthetic.sample_rng(5, "train", 3), 48, 48)
    first = synthetic.render_objects(synthetic.sample_rng(5, "train", 3), 48, 48)
    assert np.array_equal(again[0], first[0])


def test_embedded_coco_set_holds_the_scenes_objects(tmp_path):
    root = coco.generate(tmp_path / "shapes_coco", seed=0, num_train=3, num_val=2, num_test=2,
                         height=32)
    meta = coco.check_dataset(root)
    ann = json.loads((root / "annotations/instances_val.json").read_text())
    assert len(ann["images"]) == 2 and meta["counts"]["val"]["instances"] == len(ann["annotations"])
    assert {c["id"] for c in ann["categories"]} == set(range(1, 7))
    from pycocotools import mask as mask_utils

    first = ann["annotations"][0]
    decoded = mask_utils.decode(dict(first["segmentation"], counts=first["segmentation"]["counts"].encode()))
    assert int(decoded.sum()) == first["area"]
    (root / "annotations/instances_test.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_test.json"):
        coco.check_dataset(root)


def test_coco2017_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*cocodataset.org"):
        coco.check_coco2017(tmp_path / "nowhere")
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_train2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing val2017, annotations/instances_val2017"):
        coco.check_coco2017(tmp_path)
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations/instances_val2017.json").write_text("{}")
    assert coco.check_coco2017(tmp_path) == tmp_path

"""Median-frequency class weights (bcd.data.class_weights) and a model's ``class_weight`` reaching
mmseg's cross-entropy of both heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data.class_weights import (class_frequencies, median_frequency_weights,
                                    split_label_files)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)
    return path


def test_frequencies_count_pixels_of_the_images_a_class_appears_in(tmp_path):
    a = _png(tmp_path / "a.png", [[0, 0], [1, 255]])     # 4 pixels: 0 twice, 1 once, void
    b = _png(tmp_path / "b.png", [[0, 0], [0, 0]])       # 4 pixels of class 0
    pixels, present_in = class_frequencies([a, b], num_classes=3)
    assert pixels.tolist() == [6, 1, 0]
    assert present_in.tolist() == [8, 4, 0]              # class 1 appears only in a (4 pixels)


def test_median_frequency_weights_by_hand():
    # freq = [0.1, 0.3, 0.2, absent] -> median 0.2 -> weights 2, 2/3, 1 and 0 for the absent
    w = median_frequency_weights(np.array([10, 30, 20, 0]), np.array([100, 100, 100, 0]))
    assert w == pytest.approx([2.0, 2 / 3, 1.0, 0.0])
    w = median_frequency_weights(np.array([10, 30, 20, 0]), np.array([100, 100, 100, 0]), 0.5)
    assert w == pytest.approx([2 ** 0.5, (2 / 3) ** 0.5, 1.0, 0.0])


def test_a_label_out_of_range_and_a_missing_split_are_named(tmp_path):
    bad = _png(tmp_path / "bad.png", [[0, 7]])
    with pytest.raises(ValueError, match="bad.png: label 7 >= 3 classes"):
        class_frequencies([bad], num_classes=3)
    with pytest.raises(FileNotFoundError, match="no label maps of split 'train'"):
        split_label_files(tmp_path, "train")
    _png(tmp_path / "labels" / "train" / "x.png", [[0]])
    assert [p.name for p in split_label_files(tmp_path, "train")] == ["x.png"]


def test_class_weight_reaches_both_heads_losses():
    pytest.importorskip("mmseg", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
    import bcd.mm  # noqa: F401  (registration)
    from mmseg.registry import MODELS

    from bcd.mm import configs

    spec = dict(arch="pspnet", backbone="resnet", depth=18, base_channels=8,
                class_weight=[0.5, 2.0, 1.0])
    cfg = configs.segmentor(spec, num_classes=3, crop_size=(32, 32))
    assert cfg["decode_head"]["loss_decode"]["type"] == "WeightedCrossEntropyLoss"
    assert cfg["decode_head"]["loss_decode"]["class_weight"] == [0.5, 2.0, 1.0]
    assert cfg["auxiliary_head"]["loss_decode"]["class_weight"] == [0.5, 2.0, 1.0]
    # PyTorch's weighted mean over non-void pixels, by hand: sum w_y CE / sum w_y
    # `_scope_`: an earlier test's Runner may have left another default scope (mmdet's)
    loss = MODELS.build(dict(cfg["decode_head"]["loss_decode"], _scope_="mmseg"))
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255                                     # void pixels are skipped, not an error
    ce = -torch.log_softmax(logits, 1).gather(1, labels.clamp(max=2)[:, None])[:, 0]
    w = torch.tensor([0.5, 2.0, 1.0])[labels.clamp(max=2)] * (labels != 255)
    assert loss(logits, labels).item() == pytest.approx((w * ce).sum().item() / w.sum().item(),
                                                        rel=1e-5)
    loss(logits, labels).backward()
    assert torch.isfinite(logits.grad).all()
    aux = MODELS.build(dict(cfg["auxiliary_head"]["loss_decode"], _scope_="mmseg"))
    assert aux(logits, labels).item() == pytest.approx(0.4 * loss(logits, labels).item(), rel=1e-5)
    assert loss(logits, torch.full_like(labels, 255)).item() == 0.0   # an all-void crop
    with pytest.raises(ValueError, match="class_weight of pspnet / resnet-18 has 3 entries but "
                                         "the dataset has 5 classes"):
        configs.segmentor(spec, num_classes=5, crop_size=(32, 32))

"""CIRKD: cross-image relational knowledge distillation (Yang et al., CVPR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._kl import tempered_kl
from ._common import (align_pair, check_channels, check_int, check_maps, check_positive, conv, conv1x1,
                      labels_at, low_memory)
from ..precision import float32_math
from ...methods import Method, CLASSES, INTEGER, POSITIVE, WEIGHT, at_least, choice

_PROJECTORS = ("mlp", "conv1x1", "identity")

#: bcd.methods: params `type: CrossImageRelationLoss`, on the decoder's last features and the
#: labels; the projector's widths and the region memory's classes come from the models
METHOD = Method(
    type="CrossImageRelationLoss",
    inputs=dict(preds_S="student.head", preds_T="teacher.head", gt_labels="labels"),
    settings=dict(
        projector=choice(*_PROJECTORS), contrast_temperature=POSITIVE, kd_temperature=POSITIVE,
        batch_pixel_weight=WEIGHT, memory_pixel_weight=WEIGHT, memory_region_weight=WEIGHT,
        pixel_memory_size=at_least(1), region_memory_size=at_least(1),
        pixel_contrast_size=at_least(1), region_contrast_size=at_least(1),
        pixel_update_freq=at_least(1), ignore_index=INTEGER, seed=at_least(0),
        chunk_size=at_least(1)),
    channels=dict(student_channels="preds_S", teacher_channels="preds_T", num_classes=CLASSES),
)


class CrossImageRelationLoss(nn.Module):
    """CIRKD's pixel-to-pixel (mini-batch and memory) and pixel-to-region (memory) relation KD.

    Embeddings: ``e^S = normalize(h(S))`` (``h`` the learnable student head) and
    ``e^T = normalize(T)`` (teacher: identity), L2-normalised over channels. Relation logits
    ``r = <e_a, e_k> / tau_c`` of an anchor pixel ``a`` to a set of keys ``k``; every relation
    row is distilled with ``KL_kd(r^T, r^S) = tau_kd^2 KL(softmax(r^T / tau_kd) ||
    softmax(r^S / tau_kd))`` (teacher detached)::

        L_batch  = 1 / (N^2 HW) sum_{i, j} sum_{a in image i} KL_kd(rows of a over image j's pixels)
        L_pixel  = 1 / P sum_{a labelled} KL_kd(rows of a over sampled teacher pixel memory)
        L_region = 1 / P sum_{a labelled} KL_kd(rows of a over sampled teacher region memory)
        L = loss_weight * (batch_pixel_weight L_batch + memory_pixel_weight L_pixel
                           + memory_region_weight L_region)

    Batch term: each side's anchors meet its own embeddings of image ``j``; memory terms: both
    sides meet the same teacher keys; ``P`` = labelled pixels. Banks: buffers ``(K, size, D)``
    plus a pointer per class, seeded random unit vectors at init; in training mode a forward
    first enqueues per image and class the normalised mean teacher embedding (region bank) and
    ``pixel_update_freq`` random teacher pixels (pixel bank), then draws ``contrast_size // K +
    1`` entries per class (generator seeded with ``seed``: reproducible). The ``HW x HW`` and
    ``P x keys`` matrices are built in chunks under activation checkpointing.

    Args (defaults in brackets; sizes are per class, contrast sizes over all classes):
        student_channels, teacher_channels: ``C_S``, ``C_T``; embedding size ``D = C_T``.
        num_classes: ``K``; a label ``>= K`` other than ``ignore_index`` is an error.
        projector: student head ``'mlp'`` (1x1 conv, ReLU, 1x1 conv; the reference has a BN
            too), ``'conv1x1'`` (identity init if ``C_S == C_T``), ``'identity'`` [``'mlp'``].
        contrast_temperature ``tau_c`` [0.1]; kd_temperature ``tau_kd`` [1.0].
        batch_pixel_weight, memory_pixel_weight, memory_region_weight [1.0, 0.1, 0.1].
        pixel_memory_size [1024], region_memory_size [256], pixel_contrast_size [4096],
        region_contrast_size [1024], pixel_update_freq [16], ignore_index [255], seed [0],
        loss_weight [1.0], chunk_size: anchors per memory-term chunk [4096].

    Shapes:
        preds_S ``(N, C_S, H_S, W_S)``, preds_T ``(N, C_T, H, W)`` features (student resized,
        bilinear, to the teacher's size); gt_labels ``(N, H0, W0)`` (nearest-resized). Scalar out.
    """

    def __init__(self, student_channels: int, teacher_channels: int, num_classes: int,
                 projector: str = "mlp", contrast_temperature: float = 0.1, kd_temperature: float = 1.0,
                 batch_pixel_weight: float = 1.0, memory_pixel_weight: float = 0.1,
                 memory_region_weight: float = 0.1, pixel_memory_size: int = 1024,
                 region_memory_size: int = 256, pixel_contrast_size: int = 4096,
                 region_contrast_size: int = 1024, pixel_update_freq: int = 16,
                 ignore_index: int = 255, seed: int = 0, loss_weight: float = 1.0,
                 chunk_size: int = 4096) -> None:
        super().__init__()
        name = "CrossImageRelationLoss"
        cs = check_int(name, "student_channels", student_channels, 1)
        d = check_int(name, "teacher_channels", teacher_channels, 1)
        k = check_int(name, "num_classes", num_classes, 1)
        if projector not in _PROJECTORS or (projector == "identity" and cs != d):
            raise ValueError(f"{name}: projector must be one of {_PROJECTORS} ('identity' needs "
                             f"student_channels == teacher_channels), got {projector!r} with {cs} -> {d}")
        self.student_channels, self.teacher_channels, self.num_classes = cs, d, k
        self.projector = projector
        self.head = nn.ModuleList({"mlp": [conv1x1(cs, d, bias=False), conv1x1(d, d, bias=False)],
                                   "conv1x1": [conv1x1(cs, d)], "identity": []}[projector])
        self.tau_c = check_positive(name, "contrast_temperature", contrast_temperature)
        self.tau_kd = check_positive(name, "kd_temperature", kd_temperature)
        self.weights = (float(batch_pixel_weight), float(memory_pixel_weight), float(memory_region_weight))
        sizes = dict(pixel_memory_size=pixel_memory_size, region_memory_size=region_memory_size,
                     pixel_contrast_size=pixel_contrast_size, region_contrast_size=region_contrast_size,
                     pixel_update_freq=pixel_update_freq, chunk_size=chunk_size)
        for arg, value in sizes.items():
            check_int(name, arg, value, 1)
        if pixel_update_freq > pixel_memory_size:
            raise ValueError(f"{name}: pixel_update_freq ({pixel_update_freq}) must be <= "
                             f"pixel_memory_size ({pixel_memory_size})")
        self.pixel_contrast_size, self.region_contrast_size = pixel_contrast_size, region_contrast_size
        self.pixel_update_freq, self.chunk_size = pixel_update_freq, chunk_size
        self.ignore_index, self.loss_weight = int(ignore_index), float(loss_weight)
        self._generator = torch.Generator().manual_seed(int(seed))
        for bank, size in (("pixel", pixel_memory_size), ("region", region_memory_size)):
            init = torch.randn(k, size, d, generator=self._generator)
            self.register_buffer(f"{bank}_queue", F.normalize(init, dim=2))
            self.register_buffer(f"{bank}_ptr", torch.zeros(k, dtype=torch.long))
        self.last_terms: dict[str, Tensor] = {}

    def extra_repr(self) -> str:
        return (f"projector={self.projector!r}, num_classes={self.num_classes}, tau_c={self.tau_c}, "
                f"tau_kd={self.tau_kd}, weights={self.weights}, loss_weight={self.loss_weight}")

    def embed_student(self, feat: Tensor) -> Tensor:
        """``h(S)`` before normalisation (the head's weights cast to ``feat``'s dtype)."""
        for i, layer in enumerate(self.head):
            feat = conv(F.relu(feat) if i else feat, layer)
        return feat

    def _row_kl_sum(self, s_anchor: Tensor, t_anchor: Tensor, s_keys: Tensor, t_keys: Tensor) -> Tensor:
        r_s, r_t = s_anchor @ s_keys.T / self.tau_c, t_anchor @ t_keys.T / self.tau_c
        return tempered_kl(r_t, r_s, self.tau_kd, dim=1).sum()

    @torch.no_grad()
    def _enqueue(self, t_pix: Tensor, labels: Tensor) -> None:
        for feats, lab in zip(t_pix, labels.flatten(1)):  # (HW, D), (HW,) per image
            for c in torch.unique(lab[(lab != self.ignore_index) & (lab >= 0)]).tolist():
                idx = (lab == c).nonzero()[:, 0]
                ptr, size = int(self.region_ptr[c]), self.region_queue.shape[1]
                self.region_queue[c, ptr] = F.normalize(feats[idx].mean(0), dim=0).to(self.region_queue.dtype)
                self.region_ptr[c] = (ptr + 1) % size
                pick = torch.randperm(idx.numel(), generator=self._generator)[: self.pixel_update_freq]
                chosen = F.normalize(feats[idx[pick.to(idx.device)]], dim=1).to(self.pixel_queue.dtype)
                ptr, size, m = int(self.pixel_ptr[c]), self.pixel_queue.shape[1], chosen.shape[0]
                if ptr + m >= size:  # the reference code's wrap-around: write the last m slots
                    self.pixel_queue[c, size - m:] = chosen
                    self.pixel_ptr[c] = 0
                else:
                    self.pixel_queue[c, ptr:ptr + m] = chosen
                    self.pixel_ptr[c] = ptr + m

    def _memory_term(self, s_v: Tensor, t_v: Tensor, queue: Tensor, contrast_size: int) -> Tensor:
        """Mean row KL of the ``P`` anchors against ``contrast_size // K + 1`` entries per class."""
        k, size, d = queue.shape
        idx = torch.randperm(size, generator=self._generator)[: min(size, contrast_size // k + 1)]
        keys = queue[:, idx.to(queue.device)].reshape(-1, d).to(s_v.dtype)
        step = self.chunk_size
        return sum(low_memory(self._row_kl_sum, s_v[c:c + step], t_v[c:c + step], keys, keys)
                   for c in range(0, s_v.shape[0], step)) / s_v.shape[0]

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor, gt_labels: Tensor) -> Tensor:
        """Weighted sum of the three relation KD terms; see the class doc."""
        name = "CrossImageRelationLoss"
        check_maps(name, preds_S, preds_T)
        check_channels(name, preds_S, preds_T, self.student_channels, self.teacher_channels)
        s, t = align_pair(preds_S, preds_T)
        s_pix = F.normalize(self.embed_student(s), dim=1).flatten(2).transpose(1, 2)  # (N, HW, D)
        t_pix = F.normalize(t, dim=1).flatten(2).transpose(1, 2)
        labels = labels_at(name, gt_labels, t.shape[0], t.shape[-2:], t.device)
        valid = ((labels != self.ignore_index) & (labels >= 0)).flatten(1)
        if bool((labels.flatten(1)[valid] >= self.num_classes).any()):
            raise ValueError(f"{name}: gt_labels hold a class >= num_classes = {self.num_classes}")
        n, hw = s_pix.shape[:2]
        batch = sum(low_memory(self._row_kl_sum, s_pix[i], t_pix[i], s_pix[j], t_pix[j])
                    for i in range(n) for j in range(n)) / (n * n * hw)
        if self.training:
            self._enqueue(t_pix, labels)
        s_v, t_v = s_pix[valid], t_pix[valid]  # (P, D) labelled anchors
        memory = [self._memory_term(s_v, t_v, queue, size) if s_v.shape[0] else s_pix.sum() * 0.0
                  for queue, size in ((self.pixel_queue, self.pixel_contrast_size),
                                      (self.region_queue, self.region_contrast_size))]
        terms = dict(zip(("batch_pixel", "memory_pixel", "memory_region"),
                         (w * x for w, x in zip(self.weights, (batch, *memory)))))
        self.last_terms = {key: value.detach() * self.loss_weight for key, value in terms.items()}
        return self.loss_weight * sum(terms.values())

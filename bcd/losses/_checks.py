"""Input checks shared by every distillation loss of bcd (BCD's and the baselines')."""
from __future__ import annotations

from torch import Tensor


def check_maps(name: str, preds_S: Tensor, preds_T: Tensor, same_channels: bool = False) -> None:
    """Raise ``ValueError`` unless both are float ``(N, C, H, W)`` maps on one device, same ``N``.

    Args:
        name: the caller's name, used in the messages.
        preds_S: student map ``(N, C_S, H_S, W_S)``.
        preds_T: teacher map ``(N, C_T, H_T, W_T)``.
        same_channels: also require ``C_S == C_T`` (logits). Default ``False``.
    """
    for side, x in (("preds_S", preds_S), ("preds_T", preds_T)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: {side} must be a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name}: {side} must be (N, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: {side} must be floating point, got {x.dtype}")
    if preds_S.shape[0] != preds_T.shape[0]:
        raise ValueError(f"{name}: batch sizes differ: preds_S {tuple(preds_S.shape)}, "
                         f"preds_T {tuple(preds_T.shape)}")
    if same_channels and preds_S.shape[1] != preds_T.shape[1]:
        raise ValueError(f"{name}: preds_S {tuple(preds_S.shape)} and preds_T {tuple(preds_T.shape)} "
                         "must have the same number of channels (classes)")
    if preds_S.device != preds_T.device:
        raise ValueError(f"{name}: preds_S is on {preds_S.device} but preds_T is on {preds_T.device}")

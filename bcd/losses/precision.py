"""Float32 math for the distillation losses under mixed precision.

With autocast (``train.<role>.amp: bf16 | fp16``) the networks hand the losses bfloat16 or
float16 maps. The relation, affinity and KL math of BCD and of the relation baselines (Gram
matrices over hw x hw pixel pairs, softmaxes at temperature tau, sums over many terms) would
overflow in float16 and lose the small differences the KL measures in either. Each loss's
``forward`` is decorated with :func:`float32_math`: autocast is off inside and every float16 /
bfloat16 input is cast to float32 (float64 stays float64), so the loss's value and gradient are those of float32 math on the
(rounded) inputs; the gradient flows back to the low-precision maps through the cast.
"""
from __future__ import annotations

import functools

import torch


_LOW = (torch.float16, torch.bfloat16)


def as_float32(x):
    """Half-precision tensors to float32; float32 and float64 (gradchecks) as they are."""
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in _LOW else x


def float32_math(forward):
    """Decorate a loss's ``forward(self, *tensors, ...)`` to compute in float32, autocast off."""
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        args = tuple(as_float32(a) for a in args)
        kwargs = {k: as_float32(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values())
                       if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return forward(self, *args, **kwargs)

    return wrapper

"""CWD: channel-wise distillation (Shu et al., ICCV 2021; Table III "CWD").

The loss is mmrazor's own ``ChannelWiseDivergence`` (registered by mmrazor, not by bcd); this
module only declares how bcd wires it (docs/baselines.md).
"""
from __future__ import annotations

from ...methods import Method, POSITIVE

#: bcd.methods: params `type: ChannelWiseDivergence`, on the segmentation logits. mmrazor's loss
#: does not resize, so both models must predict at one stride.
METHOD = Method(
    type="ChannelWiseDivergence",
    inputs=dict(preds_S="student.logits", preds_T="teacher.logits"),
    settings=dict(tau=POSITIVE),
    same_logits_stride=True,
    external="mmrazor",
)

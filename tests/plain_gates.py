"""The attention gates as plain tensor expressions: the specification `models.gating` must equal, forward and
backward (tests/test_gating.py), and the baseline its benchmark measures against (benchmarks/attention.py).

These are the formulas of the published modules written directly, with autograd's generic backward passes:
CBAM = channel gate sigmoid(MLP(avg) + MLP(max)) over positions, then spatial gate sigmoid(BN(conv7x7([max, mean]
over channels))) on the channel-refined map; SE = the channel gate on the average alone; ECA = a 1-D conv across
the average-pooled channels.
"""

from __future__ import annotations

import contextlib

import torch

from attnrobust.models.attention import CBAM, ECA, SE


def plain_cbam(m: CBAM, x: torch.Tensor) -> torch.Tensor:
    mlp = m.channel.mlp
    cgate = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    x1 = x * cgate[:, :, None, None]
    pooled = torch.cat([x1.amax(dim=1, keepdim=True), x1.mean(dim=1, keepdim=True)], dim=1)
    return x1 * torch.sigmoid(m.spatial.bn(m.spatial.conv(pooled)))


def plain_se(m: SE, x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(m.channel.mlp(x.mean(dim=(2, 3))))[:, :, None, None]


def plain_eca(m: ECA, x: torch.Tensor) -> torch.Tensor:
    gate = torch.sigmoid(m.conv(x.mean(dim=(2, 3))[:, None, :])[:, 0])
    return x * gate[:, :, None, None]


PLAIN = {CBAM: plain_cbam, SE: plain_se, ECA: plain_eca}


@contextlib.contextmanager
def plain_gates():
    """Within the block, every CBAM, SE and ECA module computes its plain expression (no attention-map sink)."""
    saved = {cls: cls.forward for cls in PLAIN}
    try:
        for cls, fn in PLAIN.items():
            cls.forward = fn
        yield
    finally:
        for cls, fn in saved.items():
            cls.forward = fn

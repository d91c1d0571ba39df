"""WRN-40-2 for 32x32 images (Zagoruyko & Komodakis, BMVC 2016), as AugMix trained it.

Pre-activation basic blocks (norm-ReLU-conv3x3, norm-ReLU-conv3x3), three
groups of ``(depth - 4) / 6`` blocks at widths 16k, 32k, 64k (strides 1, 2, 2)
after a 16-channel 3x3 stem, then norm-ReLU. A block whose width changes
normalises and activates its input once for both branches and projects the
shortcut with a 1x1 convolution (the reference code's ``BasicBlock``).
Defaults: depth 40, widen factor 2, no dropout (AugMix's WRN-40-2), and GN with
group size 8 (see :mod:`.norm`): 2-16 groups over the 16-128-channel layers,
at least two groups in every layer so DGN has something to regroup, the group
size of the project's Fashion-MNIST study.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn

from ....errors import ConfigError
from .norm import build_norm

__all__ = ["WideResNetCIFAR"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float, norm_cfg: dict):
        super().__init__()
        self.norm1 = build_norm(norm_cfg, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm2 = build_norm(norm_cfg, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        activated = F.relu(self.norm1(x))
        if self.shortcut is not None:
            x = activated  # width changes: both branches start from the activated input
        out = F.relu(self.norm2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(x))


@MODELS.register_module(force=True)
class WideResNetCIFAR(BaseModule):
    """WRN-``depth``-``widen_factor``; returns the final (normalised, activated) feature map as a 1-tuple."""

    def __init__(self, depth: int = 40, widen_factor: int = 2, drop_rate: float = 0.0, in_channels: int = 3,
                 base_width: int = 16, norm_cfg: Optional[dict] = None,
                 init_cfg=None):
        super().__init__(init_cfg)
        norm_cfg = dict(type="GN", group_size=8, requires_grad=True) if norm_cfg is None else norm_cfg
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WideResNetCIFAR depth must be 6n + 4 with n >= 1 (e.g. 40), got {depth!r}")
        blocks = (depth - 4) // 6
        widths = [base_width * widen_factor * m for m in (1, 2, 4)]
        self.stem = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False)
        layers, cin = [], base_width
        for width, stride in zip(widths, (1, 2, 2)):
            layers.append(nn.Sequential(*[_Block(cin if i == 0 else width, width, stride if i == 0 else 1, drop_rate,
                                                 norm_cfg) for i in range(blocks)]))
            cin = width
        self.stages = nn.Sequential(*layers)
        self.norm = build_norm(norm_cfg, cin)
        self.out_channels = cin

    def init_weights(self):
        super().init_weights()
        if self.init_cfg is None:  # the reference code's initialisation
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return (F.relu(self.norm(self.stages(self.stem(x)))),)

"""ResNeXt-29 for 32x32 images (Xie et al., CVPR 2017) with AugMix's settings: cardinality 4, base width 32.

The reference code's ``CifarResNeXt``: a 64-channel 3x3 stem with norm-ReLU,
three stages of ``(depth - 2) / 9`` bottlenecks (planes 64, 128, 256; strides
1, 2, 2; expansion 4), each bottleneck 1x1 reduce to ``cardinality *
floor(planes * base_width / 64)`` channels, a grouped 3x3 (``cardinality``
groups), 1x1 expand, a projection shortcut where the shape changes, ReLU after
the sum. Features: 1024 channels at 8x8. Its layers have 64-1024 channels, so
GN keeps Wu & He's 32 groups (2-32 channels per group).
"""
from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn

from ....errors import ConfigError
from .norm import build_norm

__all__ = ["ResNeXtCIFAR"]


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, cardinality: int, base_width: int, norm_cfg: dict):
        super().__init__()
        inner = cardinality * int(math.floor(planes * base_width / 64.0))
        cout = planes * self.expansion
        self.conv_reduce = nn.Conv2d(cin, inner, 1, bias=False)
        self.norm_reduce = build_norm(norm_cfg, inner)
        self.conv_conv = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.norm = build_norm(norm_cfg, inner)
        self.conv_expand = nn.Conv2d(inner, cout, 1, bias=False)
        self.norm_expand = build_norm(norm_cfg, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), build_norm(norm_cfg, cout))

    def forward(self, x):
        out = F.relu(self.norm_reduce(self.conv_reduce(x)))
        out = F.relu(self.norm(self.conv_conv(out)))
        out = self.norm_expand(self.conv_expand(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


@MODELS.register_module(force=True)
class ResNeXtCIFAR(BaseModule):
    """ResNeXt-``depth`` (``cardinality`` x ``base_width``d); returns the last stage's map as a 1-tuple."""

    def __init__(self, depth: int = 29, cardinality: int = 4, base_width: int = 32, stem_channels: int = 64,
                 in_channels: int = 3, norm_cfg: Optional[dict] = None,
                 init_cfg=None):
        super().__init__(init_cfg)
        norm_cfg = dict(type="GN", num_groups=32, requires_grad=True) if norm_cfg is None else norm_cfg
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
            raise ConfigError(f"ResNeXtCIFAR depth must be 9n + 2 with n >= 1 (e.g. 29), got {depth!r}")
        blocks = (depth - 2) // 9
        self.stem = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
        self.stem_norm = build_norm(norm_cfg, stem_channels)
        stages, cin = [], stem_channels
        for planes, stride in zip((stem_channels, 2 * stem_channels, 4 * stem_channels), (1, 2, 2)):
            stage = []
            for i in range(blocks):
                stage.append(_Bottleneck(cin, planes, stride if i == 0 else 1, cardinality, base_width, norm_cfg))
                cin = planes * _Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def init_weights(self):
        super().init_weights()
        if self.init_cfg is None:  # the reference code's: N(0, sqrt(2 / (k*k*out_channels)))
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                    nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))

    def forward(self, x):
        return (self.stages(F.relu(self.stem_norm(self.stem(x)))),)

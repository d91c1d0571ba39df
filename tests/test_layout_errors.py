"""A DGN layer given the other layout, frozen or not: one error naming the layer, the shape it got, the layout it
expects (issue 19, part 3). The trainable layers' cases are in test_token_layer.py."""
import re

import pytest
import torch
from torch import nn

from dgn_plugins import DynamicGroupNorm, FrozenDynamicGroupNorm, FrozenTokenDynamicGroupNorm, freeze, name_layers
from dgn_plugins.errors import ConfigError
from dgn_plugins.layer import LayoutError


@pytest.mark.parametrize("layer, shape, expected", [
    (lambda: DynamicGroupNorm(32, 8), (), r"expects channels first \(N, 32, \*\)$"),  # was an IndexError
    (lambda: FrozenDynamicGroupNorm(torch.arange(32) % 8, 8), (2, 10, 32),
     r"expects channels first \(N, 32, \*\); the input looks like the other layout: use TokenDGN / "
     r"TokenDynamicGroupNorm there$"),
    (lambda: FrozenTokenDynamicGroupNorm(torch.arange(32) % 8, 8), (2, 32, 4, 4),
     r"expects channels-last tokens \(\.\.\., 32\); the input looks like the other layout: use DGN"),
])
def test_wrong_layout_names_the_layer_the_shape_and_the_layout(layer, shape, expected):
    model = nn.Sequential(nn.Identity(), nn.Sequential(layer()))
    name_layers(model)
    prefix = re.escape(f"layer 1.0 ({type(model[1][0]).__name__}(32)) got input of shape {tuple(shape)}")
    with pytest.raises(LayoutError, match="^" + prefix + ", " + expected) as error:
        model(torch.randn(shape))
    assert isinstance(error.value, ValueError) and isinstance(error.value, ConfigError)  # one line from the launchers


def test_a_frozen_layer_keeps_its_name_and_its_layout_check():
    layer = DynamicGroupNorm(32, 8)
    layer.set_group_ids(torch.arange(32) % 8)
    model = nn.Sequential(nn.Sequential(nn.Identity(), layer))
    name_layers(model)
    model = freeze(model)  # after naming: the frozen layer keeps the name
    assert type(model[0][1]) is FrozenDynamicGroupNorm  # not GN's grouping: not an nn.GroupNorm
    with pytest.raises(LayoutError, match=r"^layer 0\.1 \(FrozenDynamicGroupNorm\(32\)\) got input of shape "
                                          r"\(2, 5, 32\), expects channels first"):
        model(torch.randn(2, 5, 32))

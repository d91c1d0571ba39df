import copy

import pytest
import torch
from torch import nn

from dgn_plugins import DynamicGroupNorm, convert_gn_to_dgn


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.GroupNorm(8, 32), nn.ReLU(),
        nn.Sequential(nn.Conv2d(32, 64, 3), nn.GroupNorm(32, 64, affine=False)),
        nn.Conv2d(64, 64, 1), nn.GroupNorm(4, 64),
    )
    for module in model.modules():
        if isinstance(module, nn.GroupNorm) and module.affine:
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    return model


def test_every_group_norm_is_replaced_and_outputs_are_unchanged():
    model = _model()
    model[5].weight.requires_grad_(False)
    reference = copy.deepcopy(model)
    converted = convert_gn_to_dgn(model, percentile=0.5)
    norms = [m for m in converted.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(isinstance(m, DynamicGroupNorm) for m in norms)
    assert [m.num_groups for m in norms] == [8, 32, 4]
    assert norms[0].percentile == 0.5
    assert not norms[2].weight.requires_grad and norms[2].bias.requires_grad
    x = torch.randn(2, 3, 12, 12)
    reference.eval(), converted.eval()
    torch.testing.assert_close(converted(x), reference(x), atol=1e-5, rtol=0)


def test_a_bare_group_norm_returns_a_new_layer_and_dgn_is_left_alone():
    gn = nn.GroupNorm(4, 16).train(False)
    dgn = convert_gn_to_dgn(gn)
    assert isinstance(dgn, DynamicGroupNorm) and not dgn.training
    assert convert_gn_to_dgn(dgn) is dgn


def test_state_dict_of_the_gn_model_loads_into_the_converted_one():
    gn_model = _model()
    converted = convert_gn_to_dgn(_model())
    converted.load_state_dict(gn_model.state_dict())  # strict: GN keys are a subset DGN accepts


def test_infeasible_options_name_the_module_path():
    from dgn_plugins.grouping import DGNOptionError

    model = nn.Sequential(nn.Conv2d(3, 10, 1), nn.Sequential(nn.ReLU(), nn.GroupNorm(2, 10)))
    with pytest.raises(DGNOptionError, match=r"convert_gn_to_dgn: layer 1\.1 \(GroupNorm\(2, 10\)\).*alpha"):
        convert_gn_to_dgn(model, group_size=3, alpha=0.1)

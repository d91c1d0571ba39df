"""DynamicGroupNorm: construction, GN equivalence, running statistics, checkpoints."""
import copy
import io
import pickle

import pytest
import torch
from reference import group_norm_reference
from torch import nn

from dgn_plugins import DynamicGroupNorm
from dgn_plugins.grouping import GroupBounds, default_group_ids


def test_is_a_group_norm_with_gn_abbreviation_and_plain_parameter_names():
    layer = DynamicGroupNorm(64)
    assert isinstance(layer, nn.GroupNorm)
    assert layer._abbr_ == "gn"
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.num_groups == 32 and layer.num_channels == 64
    assert set(layer.state_dict()) == {
        "weight", "bias", "group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups"}
    # Every buffer's shape depends on C only.
    assert layer.group_id.shape == (64,) and layer.channel_mean_ema.shape == (64,)


def test_group_size_gives_floor_groups_and_spreads_the_remainder():
    layer = DynamicGroupNorm(50, group_size=16)
    assert layer.num_groups == 3
    assert layer.bounds == GroupBounds(8, 24)
    assert torch.bincount(layer.group_id).tolist() == [17, 17, 16]
    x = torch.randn(2, 50, 4, 4)
    torch.testing.assert_close(layer(x), group_norm_reference(x, layer.group_id, 3).float(), atol=1e-5, rtol=0)


def test_infeasible_bounds_name_c_k_l_h():
    with pytest.raises(ValueError) as info:
        DynamicGroupNorm(2050, group_size=16, alpha=0.05)
    for part in ("C=2050", "K=128", "L=15", "H=16"):
        assert part in str(info.value)


@pytest.mark.parametrize("bad", [dict(percentile=1.5), dict(momentum=0.0), dict(alpha=1.0),
                                 dict(cluster_features=("median",)), dict(num_groups=0),
                                 dict(n_init=0), dict(n_init="many")])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        DynamicGroupNorm(64, **bad)


@pytest.mark.parametrize("channels,groups", [(64, 32), (256, 32), (96, 3), (32, 1)])
def test_output_equals_group_norm_at_construction(channels, groups):
    gn = nn.GroupNorm(groups, channels)
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    dgn = DynamicGroupNorm(channels, groups)
    dgn.load_state_dict(gn.state_dict())
    x = torch.randn(2, channels, 9, 7) * 2 + 0.5
    torch.testing.assert_close(dgn(x), gn(x), atol=1e-6, rtol=0)


def test_plain_group_norm_state_dict_loads_strictly_and_resets_grouping():
    gn = nn.GroupNorm(8, 32)
    nn.init.normal_(gn.weight)
    dgn = DynamicGroupNorm(32, 8)
    dgn.set_group_ids(torch.arange(32) % 8)
    result = dgn.load_state_dict(gn.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(dgn.group_id, default_group_ids(32, 8))
    assert torch.equal(dgn.weight, gn.weight)


def test_checkpoint_round_trip_restores_grouping_exactly():
    layer = DynamicGroupNorm(32, 8)
    layer.train()
    layer(torch.randn(4, 32, 5, 5))
    layer.set_group_ids(torch.tensor([3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 7, 0, 7, 2, 4, 6] * 2))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    restored = DynamicGroupNorm(32, 8)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name, value in layer.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    x = torch.randn(2, 32, 3, 3)
    restored.eval()
    layer.eval()
    assert torch.equal(restored(x), layer(x))


@pytest.mark.parametrize("corrupt,message", [
    (lambda ids: ids[:-1], "shape"),
    (lambda ids: torch.where(ids == 0, 9, ids), "ids in"),
    (lambda ids: torch.where(ids == 1, 0, ids), "outside"),
    (lambda ids: ids.float(), "integers"),
])
def test_corrupt_grouping_in_checkpoint_is_rejected(corrupt, message):
    layer = DynamicGroupNorm(32, 8)
    state = layer.state_dict()
    state["group_id"] = corrupt(state["group_id"])
    fresh = DynamicGroupNorm(32, 8)
    before = fresh.group_id.clone()
    with pytest.raises(ValueError, match=f"corrupt DGN grouping.*{message}"):
        fresh.load_state_dict(state)
    assert torch.equal(fresh.group_id, before)


def test_corrupt_statistics_shape_in_checkpoint_is_rejected():
    state = DynamicGroupNorm(32, 8).state_dict()
    state["channel_mean_ema"] = torch.zeros(31)
    with pytest.raises(ValueError, match="corrupt DGN statistics.*channel_mean_ema"):
        DynamicGroupNorm(32, 8).load_state_dict(state)


def test_running_statistics_follow_the_definition():
    layer = DynamicGroupNorm(16, 4, momentum=0.25)
    batches = [torch.randn(3, 16, 5, 5) * torch.rand(1, 16, 1, 1) * 3 + torch.randn(1, 16, 1, 1) for _ in range(3)]
    mean_ema = var_ema = None
    for x in batches:
        layer(x)
        batch_mean = x.double().mean((0, 2, 3))
        batch_var = x.double().var((0, 2, 3), unbiased=False)  # total variance over the batch
        mean_ema = batch_mean if mean_ema is None else 0.75 * mean_ema + 0.25 * batch_mean
        var_ema = batch_var if var_ema is None else 0.75 * var_ema + 0.25 * batch_var
    assert int(layer.num_stat_updates) == 3
    torch.testing.assert_close(layer.channel_mean_ema.double(), mean_ema, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.channel_var_ema.double(), var_ema, atol=1e-5, rtol=1e-5)


def test_statistics_are_not_collected_in_eval_when_disabled_or_for_empty_batches():
    for layer, x in [(DynamicGroupNorm(16, 4).eval(), torch.randn(2, 16, 3, 3)),
                     (DynamicGroupNorm(16, 4, track_channel_stats=False), torch.randn(2, 16, 3, 3)),
                     (DynamicGroupNorm(16, 4), torch.randn(0, 16, 3, 3))]:
        layer(x)
        assert int(layer.num_stat_updates) == 0
        assert torch.equal(layer.channel_mean_ema, torch.zeros(16))


def test_non_finite_batch_does_not_poison_running_statistics():
    layer = DynamicGroupNorm(16, 4)
    layer(torch.randn(2, 16, 3, 3))
    before = layer.channel_mean_ema.clone()
    x = torch.randn(2, 16, 3, 3)
    x[:, 3] = float("nan")
    layer(x)
    assert torch.isfinite(layer.channel_mean_ema).all() and torch.isfinite(layer.channel_var_ema).all()
    assert layer.channel_mean_ema[3] == before[3]
    assert not torch.equal(layer.channel_mean_ema, before)  # the finite channels did update


def test_wrong_channel_count_names_the_problem():
    with pytest.raises(ValueError, match=r"^DynamicGroupNorm\(32\) .*got input of shape \(2, 16, 3, 3\), "
                                         r"expects channels first \(N, 32, \*\)$"):
        DynamicGroupNorm(32, 8)(torch.randn(2, 16, 3, 3))


def test_set_group_ids_validates_and_keeps_the_old_grouping_on_error():
    layer = DynamicGroupNorm(16, 4)
    before = layer.group_id.clone()
    with pytest.raises(ValueError):
        layer.set_group_ids(torch.zeros(16, dtype=torch.long))
    assert torch.equal(layer.group_id, before)
    layer.set_group_ids(torch.arange(16) % 4)
    assert layer.group_count.tolist() == [4, 4, 4, 4]
    assert not layer.grouping.is_contiguous_equal()
    layer.reset_grouping()
    assert layer.grouping.is_contiguous_equal()


def test_copies_pickles_and_moves_dtype():
    layer = DynamicGroupNorm(16, 4)
    layer.set_group_ids(torch.arange(16) % 4)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(clone.group_id, layer.group_id)
    double = copy.deepcopy(layer).double()
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    assert double(x).dtype == torch.float64
    assert double.group_id.dtype == torch.long


def test_infeasible_bounds_say_which_option_to_change():
    from dgn_plugins.grouping import DGNOptionError

    with pytest.raises(DGNOptionError, match=r"group_size=16, alpha=0.05.*raise alpha to >= 0\.063 \(now 0\.05\)"):
        DynamicGroupNorm(2050, group_size=16, alpha=0.05)
    with pytest.raises(DGNOptionError, match=r"raise alpha to >= 0\.200 .*a num_groups that divides C \(e\.g\. 2\)"):
        DynamicGroupNorm(10, num_groups=3, alpha=0.1)
    DynamicGroupNorm(2050, group_size=16, alpha=0.063)  # the advice is enough
    DynamicGroupNorm(10, num_groups=3, alpha=0.2)


def test_check_options_validates_without_a_layer():
    assert DynamicGroupNorm.check_options(num_groups=8, percentile=0.5) == dict(num_groups=8, percentile=0.5)
    with pytest.raises(TypeError):
        DynamicGroupNorm.check_options(num_group=8)  # misspelt
    for bad in (dict(alpha=1.5), dict(momentum=0.0), dict(percentile=2.0), dict(cluster_features=("median",)),
                dict(n_init=0)):
        with pytest.raises(ValueError):
            DynamicGroupNorm.check_options(**bad)

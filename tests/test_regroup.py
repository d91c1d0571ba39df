"""The poster's regrouping rule, on layers and whole models."""
import warnings

import numpy as np
import pytest
import torch
from reference import group_norm_reference
from torch import nn

import dgn_plugins.regrouping.rule as regroup_module
from dgn_plugins import DynamicGroupNorm, regroup_model, summarize
from dgn_plugins.grouping import GroupBounds, check_group_ids, default_group_ids
from dgn_plugins.regrouping.rule import intra_group_variance, plan_regroup, standardize, within_group_sum_of_squares


def _layer_with_stats(channel_mean, channel_var=None, num_groups=4, **kwargs):
    channel_mean = torch.as_tensor(channel_mean, dtype=torch.float32)
    layer = DynamicGroupNorm(channel_mean.numel(), num_groups, **kwargs)
    layer.channel_mean_ema.copy_(channel_mean)
    layer.channel_var_ema.copy_(torch.ones_like(channel_mean) if channel_var is None else torch.as_tensor(channel_var))
    layer.num_stat_updates.fill_(1)
    return layer


def _mixed_means():
    """16 channels, 4 groups of 4: groups 0 and 1 each hold two 'low' and two
    'high' channels; groups 2 and 3 are already homogeneous."""
    return [0.0, 0.1, 5.0, 5.1,  0.05, 0.15, 5.05, 5.15,  2.0, 2.01, 2.02, 2.03,  3.0, 3.02, 3.04, 3.06]


def test_intra_group_variance_is_the_poster_formula():
    means = np.array(_mixed_means())
    ids = default_group_ids(16, 4).numpy()
    expected = [np.mean((means[4 * k:4 * k + 4] - means[4 * k:4 * k + 4].mean()) ** 2) for k in range(4)]
    np.testing.assert_allclose(intra_group_variance(means, ids, 4), expected)


def test_heterogeneous_groups_are_dissolved_and_others_kept():
    layer = _layer_with_stats(_mixed_means(), cluster_features=("mean",))
    before = layer.group_id.clone()
    report = layer.regroup(percentile=0.5)
    after = layer.group_id
    check_group_ids(after, 16, 4, layer.bounds)
    assert report.skipped is None
    assert report.groups_dissolved == 2
    assert torch.equal(after[8:], before[8:])  # groups 2 and 3 untouched
    # The low channels now share a group, and so do the high ones.
    low, high = [0, 1, 4, 5], [2, 3, 6, 7]
    assert len(set(after[low].tolist())) == 1 and len(set(after[high].tolist())) == 1
    assert set(after[low].tolist() + after[high].tolist()) == {0, 1}
    assert report.objective_after < report.objective_before
    assert report.mean_group_variance_after < report.mean_group_variance_before
    assert report.channels_moved == int((after != before).sum()) == 4
    assert report.groups_changed == 2
    assert int(layer.num_regroups) == 1


def test_only_groups_strictly_above_the_percentile_dissolve():
    means = np.array(_mixed_means())
    ids = default_group_ids(16, 4).numpy()
    features = standardize(means)
    bounds = GroupBounds(2, 6)
    plan = plan_regroup(means, features, ids, 4, bounds, percentile=1.0)
    assert plan.report.groups_dissolved == 0 and np.array_equal(plan.group_id, ids)
    plan = plan_regroup(means, features, ids, 4, bounds, percentile=0.0)
    # All but the least heterogeneous group dissolve at p = 0.
    assert plan.report.groups_dissolved == 3
    kept = np.argmin(intra_group_variance(means, ids, 4))
    assert np.array_equal(plan.group_id[ids == kept], ids[ids == kept])


def test_sizes_can_change_within_bounds():
    # Three tight clusters of 5, 3 and 8 channels hidden in 4 groups of 4.
    rng = np.random.default_rng(0)
    cluster_of_channel = rng.permutation([0] * 5 + [1] * 3 + [2] * 8 + [3] * 0)
    means = np.array([0.0, 10.0, 20.0])[cluster_of_channel] + 0.01 * rng.standard_normal(16)
    layer = _layer_with_stats(means, num_groups=4, alpha=0.75, cluster_features=("mean",))  # sizes in [1, 7]
    layer.regroup(percentile=0.0)
    sizes = torch.bincount(layer.group_id, minlength=4)
    assert sizes.min() >= layer.bounds.size_min and sizes.max() <= layer.bounds.size_max
    assert sorted(sizes.tolist()) != [4, 4, 4, 4]


def test_regroup_is_deterministic_given_a_seed():
    rng = np.random.default_rng(1)
    means, variances = rng.standard_normal(64), rng.lognormal(size=64)
    groupings = []
    for _ in range(2):
        layer = _layer_with_stats(means, variances, num_groups=8, seed=7)
        layer.regroup(percentile=0.25)
        groupings.append(layer.group_id.clone())
    assert torch.equal(groupings[0], groupings[1])
    assert not torch.equal(groupings[0], default_group_ids(64, 8))


def test_no_statistics_means_skip_with_warning():
    layer = DynamicGroupNorm(16, 4)
    with pytest.warns(RuntimeWarning, match="no running channel statistics"):
        report = layer.regroup()
    assert report.skipped and torch.equal(layer.group_id, default_group_ids(16, 4))
    assert int(layer.num_regroups) == 0


def test_non_finite_statistics_mean_skip_with_warning_and_no_nan():
    layer = _layer_with_stats(_mixed_means())
    layer.channel_var_ema[3] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        report = layer.regroup(percentile=0.5)
    assert report.skipped and torch.equal(layer.group_id, default_group_ids(16, 4))
    out = layer.eval()(torch.randn(2, 16, 3, 3))
    assert torch.isfinite(out).all()


def test_identical_channels_change_nothing():
    layer = _layer_with_stats(torch.ones(16))
    report = layer.regroup()
    assert report.skipped is None and report.groups_changed == 0
    assert torch.equal(layer.group_id, default_group_ids(16, 4))


def test_a_failing_solver_keeps_the_previous_grouping(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(regroup_module, "size_constrained_kmeans", broken)
    layer = _layer_with_stats(_mixed_means())
    layer.set_group_ids(torch.arange(16) % 4)
    before = layer.group_id.clone()
    with pytest.warns(RuntimeWarning, match="solver exploded"):
        report = layer.regroup(percentile=0.0)
    assert "grouping unchanged" in report.skipped
    assert torch.equal(layer.group_id, before)


def test_a_solver_returning_an_invalid_partition_is_refused(monkeypatch):
    class Bad:
        labels = np.zeros(12, dtype=np.int64)  # everything in one cluster: sizes out of bounds

    monkeypatch.setattr(regroup_module, "size_constrained_kmeans", lambda *a, **k: Bad())
    layer = _layer_with_stats(_mixed_means())
    with pytest.warns(RuntimeWarning, match="grouping unchanged.*outside"):
        layer.regroup(percentile=0.0)
    assert torch.equal(layer.group_id, default_group_ids(16, 4))


def test_forward_after_regroup_uses_the_new_grouping():
    layer = _layer_with_stats(_mixed_means())
    layer.regroup(percentile=0.5)
    x = torch.randn(2, 16, 4, 4)
    expected = group_norm_reference(x, layer.group_id, 4, layer.weight, layer.bias).float()
    torch.testing.assert_close(layer.eval()(x), expected, atol=1e-5, rtol=0)


def test_training_then_regroup_end_to_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), DynamicGroupNorm(32, 8), nn.ReLU(), nn.Conv2d(32, 32, 3),
                          DynamicGroupNorm(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 10, 10)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    reports = regroup_model(model, percentile=0.5)
    assert [r.name for r in reports] == ["1", "4"]
    totals = summarize(reports)
    assert totals["layers"] == 2 and totals["layers_skipped"] == 0
    assert totals["channels_moved"] > 0
    out = model(torch.randn(2, 3, 10, 10))
    assert torch.isfinite(out).all()


def test_regroup_model_skips_frozen_and_eval_layers():
    model = nn.ModuleDict({"learning": DynamicGroupNorm(16, 4), "frozen": DynamicGroupNorm(16, 4),
                           "evaluating": DynamicGroupNorm(16, 4)})
    for layer in model.values():
        layer.channel_mean_ema.copy_(torch.tensor(_mixed_means()))
        layer.num_stat_updates.fill_(1)
    model["frozen"].requires_grad_(False)
    model["evaluating"].eval()
    reports = regroup_model(model, percentile=0.5)
    assert [r.name for r in reports] == ["learning"]
    assert not torch.equal(model["learning"].group_id, default_group_ids(16, 4))
    for name in ("frozen", "evaluating"):
        assert torch.equal(model[name].group_id, default_group_ids(16, 4))
    assert len(regroup_model(model, only_trainable=False, percentile=0.5)) == 3


def test_checkpoint_after_regroup_round_trips_bit_exactly():
    layer = _layer_with_stats(_mixed_means())
    layer.regroup(percentile=0.5)
    restored = DynamicGroupNorm(16, 4)
    restored.load_state_dict(layer.state_dict())
    assert torch.equal(restored.group_id, layer.group_id)
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(restored.eval()(x), layer.eval()(x))
    # and a second regroup from the restored state plans the same as the original
    assert torch.equal(torch.tensor(restored.regroup(percentile=0.5).channels_moved),
                       torch.tensor(layer.regroup(percentile=0.5).channels_moved))
    assert torch.equal(restored.group_id, layer.group_id)


def test_regroup_warnings_are_not_raised_for_healthy_layers():
    layer = _layer_with_stats(_mixed_means())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.regroup()


# ------------------------------------------------------------ the poster's statistic by default
def _interleaved_levels(seed=0):
    """Two groups of 8 whose channel means alternate between the levels 60 and 62,
    with spreads (variances) unrelated to the means; two homogeneous groups beside them."""
    rng = np.random.default_rng(seed)
    levels = np.tile([60.0, 62.0], 8) + 1e-3 * rng.standard_normal(16)
    means = np.concatenate([levels, 10.0 + 1e-3 * rng.standard_normal(16)])
    variances = rng.lognormal(0.0, 1.0, size=32)
    return means, variances


def test_the_default_clusters_the_channel_means():
    assert DynamicGroupNorm(16, 4).cluster_features == ("mean",)


def test_the_default_separates_interleaved_mean_levels():
    means, variances = _interleaved_levels()
    layer = _layer_with_stats(means, variances, num_groups=4)
    report = layer.regroup(percentile=0.5)
    assert report.skipped is None and report.groups_dissolved == 2
    ids = layer.group_id[:16]
    low, high = ids[0::2], ids[1::2]
    assert len(set(low.tolist())) == 1 and len(set(high.tolist())) == 1 and low[0] != high[0]
    assert report.within_group_ss_after < 1e-3 * report.within_group_ss_before
    assert report.cluster_features == ("mean",)


def test_clustering_mean_and_var_need_not_separate_them():
    # Why the default changed: with z-scored (mean, var) features the noisy
    # variance column weighs as much as the mean and the levels stay mixed.
    means, variances = _interleaved_levels()
    layer = _layer_with_stats(means, variances, num_groups=4, cluster_features=("mean", "var"))
    report = layer.regroup(percentile=0.5)
    assert report.within_group_ss_after > 0.5 * report.within_group_ss_before


def _hard_channel_means(kind, rng, size):
    if kind == "interleaved":
        return np.tile([60.0, 62.0], size // 2) + 1e-3 * rng.standard_normal(size)
    if kind == "heavy_tailed":
        return rng.standard_cauchy(size)
    if kind == "clustered":
        return rng.choice([-5.0, 0.0, 0.1, 7.0], size) + 0.01 * rng.standard_normal(size)
    return rng.standard_normal(size) * rng.lognormal(0.0, 2.0, size)  # scale varies by channel


@pytest.mark.parametrize("kind", ["interleaved", "heavy_tailed", "clustered", "mixed_scales"])
@pytest.mark.parametrize("percentile", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("seed", range(4))
def test_a_default_regroup_never_raises_the_within_group_spread_of_the_means(kind, percentile, seed):
    rng = np.random.default_rng(seed)
    channels, groups = 64, 8
    means = _hard_channel_means(kind, rng, channels).astype(np.float32).astype(np.float64)  # as the buffer holds them
    noisy_variances = rng.lognormal(0.0, 3.0, channels)  # unrelated to the means
    layer = _layer_with_stats(means, noisy_variances, num_groups=groups, alpha=0.5)
    # Start from a scrambled (but valid) grouping, as after earlier regroups.
    layer.set_group_ids(torch.from_numpy(rng.permutation(np.arange(channels) % groups)))
    old = layer.group_id.numpy().copy()
    before = within_group_sum_of_squares(means, old, groups)
    report = layer.regroup(percentile=percentile)
    new = layer.group_id.numpy().copy()
    after = within_group_sum_of_squares(means, new, groups)
    assert report.skipped is None
    assert after <= before * (1 + 1e-9) + 1e-12
    np.testing.assert_allclose([report.within_group_ss_before, report.within_group_ss_after], [before, after],
                               rtol=1e-9, atol=1e-12)
    # The dissolved channels are re-clustered to optimality (1-D): no swap of two
    # of them between groups lowers the within-group sum of squares.
    dissolved = np.isin(old, np.flatnonzero(intra_group_variance(means, old, groups) > report.threshold))
    candidates = np.flatnonzero(dissolved)
    for a in candidates:
        for b in candidates:
            if a < b and new[a] != new[b]:
                swapped = new.copy()
                swapped[[a, b]] = swapped[[b, a]]
                assert within_group_sum_of_squares(means, swapped, groups) >= after * (1 - 1e-9) - 1e-12

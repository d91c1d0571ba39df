import pytest
import torch

from dgn_plugins.grouping import (
    GroupBounds,
    Grouping,
    check_group_ids,
    default_group_ids,
    group_bounds,
    resolve_num_groups,
)


def test_bounds_follow_the_poster():
    assert group_bounds(16, 0.5) == GroupBounds(8, 24)
    assert group_bounds(16, 0.25) == GroupBounds(12, 20)
    assert group_bounds(8, 0.3) == GroupBounds(5, 10)  # floor(5.6), floor(10.4)
    assert group_bounds(2, 0.4) == GroupBounds(1, 2)  # L raised from 1.2 -> 1 stays 1
    assert group_bounds(1, 0.5) == GroupBounds(1, 1)  # floor(0.5) = 0 raised to 1


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_bounds_reject_alpha_outside_open_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        group_bounds(16, alpha)


def test_resolve_from_group_size_uses_floor():
    assert resolve_num_groups(2050, None, 16) == (128, 16.0)
    assert resolve_num_groups(64, 32, None) == (32, 2.0)
    with pytest.raises(ValueError, match="num_channels=8"):
        resolve_num_groups(8, None, 16)
    with pytest.raises(ValueError, match="exceeds"):
        resolve_num_groups(8, 16, None)


def test_default_ids_are_contiguous_and_spread_the_remainder():
    ids = default_group_ids(10, 4)
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert default_group_ids(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_default_ids_reject_infeasible_bounds_naming_everything():
    with pytest.raises(ValueError) as info:
        default_group_ids(2050, 128, GroupBounds(16, 16))
    message = str(info.value)
    for part in ("C=2050", "K=128", "L=16", "H=16"):
        assert part in message


def test_check_group_ids_catches_each_corruption():
    bounds = GroupBounds(2, 6)
    good = default_group_ids(16, 4)
    check_group_ids(good, 16, 4, bounds)
    with pytest.raises(ValueError, match="shape"):
        check_group_ids(good[:15], 16, 4, bounds)
    with pytest.raises(ValueError, match="ids in"):
        check_group_ids(torch.where(good == 3, 7, good), 16, 4, bounds)
    with pytest.raises(ValueError, match="ids in"):
        check_group_ids(good - 1, 16, 4, bounds)
    with pytest.raises(ValueError, match="integers"):
        check_group_ids(good.float(), 16, 4, bounds)
    lopsided = torch.tensor([0] * 7 + [1] * 3 + [2] * 3 + [3] * 3)
    with pytest.raises(ValueError, match="outside"):
        check_group_ids(lopsided, 16, 4, bounds)


def test_layout_views_agree_with_ids():
    ids = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0])
    layout = Grouping.from_group_ids(ids, 3)
    assert layout.sizes.tolist() == [3, 3, 2]
    assert layout.offsets.tolist() == [0, 3, 6, 8]
    for k in range(3):
        members = layout.channels[layout.offsets[k]:layout.offsets[k + 1]]
        assert (ids[members] == k).all()
    assert not layout.is_contiguous_equal()
    assert Grouping.from_group_ids(default_group_ids(8, 4), 4).is_contiguous_equal()
    relabelled = torch.tensor([3, 3, 0, 0, 2, 2, 1, 1])
    assert Grouping.from_group_ids(relabelled, 4).is_contiguous_equal()
    assert not Grouping.from_group_ids(default_group_ids(10, 4), 4).is_contiguous_equal()

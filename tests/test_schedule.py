import pytest

from dgn_plugins.regrouping.schedule import RegroupSchedule


def test_due_every_interval_between_start_and_stop():
    schedule = RegroupSchedule(interval=10, start=20, stop=50)
    assert [s for s in range(0, 80) if schedule.is_due(s)] == [20, 30, 40, 50]
    assert [s for s in range(0, 35) if RegroupSchedule(interval=10).is_due(s)] == [10, 20, 30]


def test_once_per_step_and_state_round_trip():
    schedule = RegroupSchedule(interval=5)
    assert schedule.is_due(5)
    schedule.mark_done(5)
    assert not schedule.is_due(5)
    resumed = RegroupSchedule(interval=5)
    resumed.load_state_dict(schedule.state_dict())
    assert not resumed.is_due(5) and resumed.is_due(10)


@pytest.mark.parametrize("kwargs", [dict(interval=0), dict(start=-1), dict(start=10, stop=5)])
def test_bad_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RegroupSchedule(**kwargs)


def test_a_regroup_after_the_last_step_is_warned_about():
    assert "after the last of 4000 iterations" in RegroupSchedule(interval=1000).final_step_warning(4000)
    assert "stop=3000" in RegroupSchedule(interval=1000).final_step_warning(4000)
    assert RegroupSchedule(interval=1000, stop=3000).final_step_warning(4000) is None
    assert RegroupSchedule(interval=1000).final_step_warning(4500) is None
    assert "12 epochs" in RegroupSchedule(interval=3).final_step_warning(12, "epochs")

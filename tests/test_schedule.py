import pytest

from dgn_plugins.training.schedule import RegroupSchedule


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


def test_shares_of_the_run_resolve_against_its_length():
    # The study's settings (bench/RESULTS.md) are shares: every 10% of training, none in the last 10%.
    schedule = RegroupSchedule(interval=0.1, stop=0.9)
    assert schedule.has_shares and "10% of the run" in schedule.describe()
    with pytest.raises(RuntimeError, match="resolve"):
        schedule.is_due(100)
    resolved = schedule.resolve(2500)
    assert (resolved.interval, resolved.start, resolved.stop) == (250, 0, 2250)
    assert [s for s in range(2501) if resolved.is_due(s)] == list(range(250, 2251, 250))
    assert resolved.final_step_warning(2500) is None
    assert RegroupSchedule(interval=0.001).resolve(100).interval == 1  # never below one step
    assert RegroupSchedule(interval=1, stop=0.9).resolve(3).stop == 2  # not after the last step of a short run
    assert RegroupSchedule(interval=1, stop=0.29).resolve(100).stop == 29  # 0.29 * 100 is 28.999999999999996
    assert RegroupSchedule(interval=0.25, start=0.5).resolve(40) == RegroupSchedule(interval=10, start=20)
    plain = RegroupSchedule(interval=7, stop=30)
    assert plain.resolve(100) is plain and not plain.has_shares
    with pytest.raises(ValueError, match="length"):
        schedule.resolve(0)


def test_resolving_keeps_the_resumed_calendar():
    schedule = RegroupSchedule(interval=0.1, stop=0.9)
    schedule.load_state_dict({"interval": 250, "start": 0, "stop": 2250, "last_regroup_step": 500})
    resolved = schedule.resolve(2500)
    assert not resolved.is_due(500) and resolved.is_due(750)


@pytest.mark.parametrize("kwargs", [dict(interval=1.5), dict(interval=0.0), dict(stop=1.0), dict(start=-0.2)])
def test_shares_outside_zero_one_are_rejected(kwargs):
    with pytest.raises(ValueError, match="share of the run|must be >= 0"):
        RegroupSchedule(**kwargs)


def test_the_default_schedule_is_the_one_the_study_chose():
    """bench/RESULTS.md (dgn_study, chosen on validation corruptions): every 10% of the run, none in its last 10%."""
    import importlib.util
    import inspect

    from dgn_plugins import RegroupController

    targets = [RegroupController]
    if importlib.util.find_spec("mmengine") is not None:
        from dgn_plugins.openmmlab.hook import DGNRegroupHook as MMEngineHook

        targets.append(MMEngineHook)
    if importlib.util.find_spec("detectron2") is not None:
        from dgn_plugins.detectron2.hook import DGNRegroupHook as Detectron2Hook

        targets.append(Detectron2Hook)
    for target in targets:
        parameters = inspect.signature(target.__init__).parameters
        assert (parameters["interval"].default, parameters["stop"].default) == (0.1, 0.9), target

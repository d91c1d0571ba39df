"""RegroupController in a plain PyTorch loop, and RegroupPolicy's precedence over the layers' own settings."""
import logging

import pytest
import torch
from torch import nn

from dgn_plugins import DynamicGroupNorm, RegroupController, RegroupPolicy, dgn_layers, regroup_model
from dgn_plugins.training.records import RegroupRecords


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 3), DynamicGroupNorm(32, 8), nn.ReLU(), nn.Conv2d(32, 32, 3),
                         DynamicGroupNorm(32, 8, percentile=0.25))


def _train_step(model):
    model(torch.randn(4, 3, 10, 10)).pow(2).mean().backward()


def test_policy_validates_and_overrides_only_what_it_sets():
    with pytest.raises(ValueError, match="percentile"):
        RegroupPolicy(percentile=1.5)
    with pytest.raises(ValueError, match="cluster_features"):
        RegroupPolicy(cluster_features=("median",))
    with pytest.raises(ValueError, match="n_init"):
        RegroupPolicy(n_init=0)
    layer = RegroupPolicy.full(percentile=0.25, seed=3)
    merged = layer.overridden_by(RegroupPolicy(n_init=2))
    assert (merged.percentile, merged.seed, merged.n_init, merged.cluster_features) == (0.25, 3, 2, ("mean",))
    assert layer.overridden_by(None) is layer
    assert RegroupPolicy(percentile=0.5).as_dict() == {"percentile": 0.5}


def test_model_policy_overrides_the_layer_policy():
    model = _model()
    _train_step(model)
    reports = regroup_model(model, policy=RegroupPolicy(percentile=1.0))  # nothing exceeds the maximum
    assert [r.groups_dissolved for r in reports] == [0, 0]
    reports = regroup_model(model)  # each layer's own: 0.75 dissolves 2 of 8 groups, 0.25 dissolves 6
    assert [r.groups_dissolved for r in reports] == [2, 6]
    assert dgn_layers(model)[1][1].percentile == 0.25  # the layer's own setting is untouched


def test_controller_runs_a_plain_loop_logs_records_and_resumes(tmp_path, caplog):
    model = _model()
    controller = RegroupController(interval=2, stop=4, records_file="groups.jsonl",
                                   policy=RegroupPolicy(percentile=0.5), statistics=dict(momentum=0.3))
    logger = logging.getLogger("test_controller")
    with caplog.at_level(logging.INFO, logger="test_controller"):
        assert controller.before_train(model, total_steps=5, logger=logger, work_dir=str(tmp_path)) == 2
        scalars = []
        for step in range(1, 6):
            _train_step(model)
            scalars.append(controller.after_step(model, step, logger))
    assert all(layer.momentum == 0.3 for _, layer in dgn_layers(model))
    assert [s is not None for s in scalars] == [False, True, False, True, False]
    assert scalars[3]["regroups"] == 2 and scalars[3]["groups_dissolved"] == 8  # 4 of 8 groups in 2 layers
    assert set(scalars[1]) == {"groups_changed", "channels_moved", "groups_dissolved", "layers_regrouped",
                               "layers_skipped", "regroups"}
    text = caplog.text
    assert "2 DGN layers, regroup every 2 iterations from 0 to 4" in text
    assert "DGN regroup #1 after iter 2:" in text and "DGN regroup #2 after iter 4:" in text
    assert [r["step"] for r in RegroupRecords(tmp_path / "groups.jsonl").read()] == [2, 4]

    resumed = RegroupController(interval=2, stop=4)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.regroups_done == 2 and resumed.schedule.last_regroup_step == 4
    assert resumed.state_dict() == {"schedule": {"interval": 2, "start": 0, "stop": 4, "last_regroup_step": 4},
                                    "regroups_done": 2}


def test_controller_checks_statistics_options():
    with pytest.raises(ValueError, match="momentum"):
        RegroupController(statistics=dict(momentum=0.0))
    with pytest.raises(TypeError, match="alpha"):
        RegroupController(statistics=dict(alpha=0.3))


def test_controller_schedule_in_shares_of_the_run(caplog):
    model = _model()
    controller = RegroupController(interval=0.25, stop=0.75)
    logger = logging.getLogger("test_controller")
    with caplog.at_level(logging.INFO, logger="test_controller"):
        controller.before_train(model, total_steps=8, logger=logger)
    assert "regroup every 2 iterations from 0 to 6" in caplog.text
    due = []
    for step in range(1, 9):
        _train_step(model)
        due.append(controller.after_step(model, step, logger) is not None)
    assert due == [False, True, False, True, False, True, False, False]

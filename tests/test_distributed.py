"""Two CPU processes (gloo): after regroup_model every rank holds the same grouping."""
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dgn_plugins import DynamicGroupNorm, regroup_model

RANKS_TIMEOUT_S = 300  # the two ranks take about 10 s; past this they hang, and the test says so


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A rank that cannot reach the other fails within a minute instead of waiting out gloo's 30.
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)  # same weights everywhere
        model = nn.Sequential(nn.Conv2d(3, 32, 3), DynamicGroupNorm(32, 8), nn.ReLU(), nn.Conv2d(32, 64, 3),
                              DynamicGroupNorm(64, 8))
        torch.manual_seed(100 + rank)  # different data per rank: different running statistics
        for _ in range(3):
            model(torch.randn(2, 3, 9, 9) * (1 + rank))
        local_means = [m.channel_mean_ema.clone() for m in model if isinstance(m, DynamicGroupNorm)]
        reports = regroup_model(model, percentile=0.25)
        torch.save({
            "group_id": [m.group_id.clone() for m in model if isinstance(m, DynamicGroupNorm)],
            "mean": [m.channel_mean_ema.clone() for m in model if isinstance(m, DynamicGroupNorm)],
            "local_mean": local_means,
            "moved": [r.channels_moved for r in reports],
        }, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_regroup_gives_identical_groupings(tmp_path):
    workers = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    while not workers.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"the two gloo ranks did not finish within {RANKS_TIMEOUT_S} s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert not torch.equal(ranks[0]["local_mean"][0], ranks[1]["local_mean"][0])  # the ranks did differ
    for layer in range(2):
        assert torch.equal(ranks[0]["group_id"][layer], ranks[1]["group_id"][layer])
        expected_mean = (ranks[0]["local_mean"][layer] + ranks[1]["local_mean"][layer]) / 2
        torch.testing.assert_close(ranks[0]["mean"][layer], expected_mean)
        torch.testing.assert_close(ranks[1]["mean"][layer], expected_mean)
    assert sum(ranks[0]["moved"]) > 0

"""``torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch`` on
CPU (gloo): after every regroup both ranks hold identical groupings, although
each rank sees different images (the worker calls tools/train.py's main)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from dgn_plugins.grouping import default_group_ids

pytest.importorskip("mmdet", reason="mmdet is not installed")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_train_worker.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_end_every_regroup_with_identical_groupings(tiny_coco, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", WORKER, str(tmp_path), tiny_coco,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"groupings_rank{r}.pt") for r in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["backend"] == "gloo"
    assert ranks[0]["wrapper"] == "MMDistributedDataParallel"
    names = sorted(ranks[0]["group_id"])
    assert names == sorted(ranks[1]["group_id"]) and names
    changed = 0
    for name in names:
        group_id = ranks[0]["group_id"][name]
        assert torch.equal(group_id, ranks[1]["group_id"][name]), name
        assert ranks[0]["num_regroups"][name] == ranks[1]["num_regroups"][name] == 3
        changed += not torch.equal(group_id, default_group_ids(group_id.numel(), int(group_id.max()) + 1))
    assert changed, "no grouping changed: the test would be vacuous"

    # Both ranks share the work_dir; only the main process writes the regroup records.
    records = [json.loads(line) for line in (tmp_path / "dgn_groups.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(records[-1]["group_id"][name] == ranks[0]["group_id"][name].tolist() for name in names)

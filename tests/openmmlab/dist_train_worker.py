"""One rank of test_hook_distributed.py, started by torchrun.

Writes the DGN demo config cut to a few tiny iterations (regroup hook every
iteration, mmengine's SyncBuffersHook on) to a file, trains it with
``tools/train.py CONFIG --launcher pytorch`` (gloo on CPU), then saves this
rank's groupings.

    torchrun --nproc_per_node=2 dist_train_worker.py WORK_DIR DATA_ROOT
"""
import os
import sys

import torch
import torch.distributed as dist
from mmdet_helpers import DEMO_DGN, import_train_tool, tiny_run_cfg  # a script's folder is on sys.path


def main(work_dir, data_root):
    train_tool = import_train_tool()
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, work_dir, data_root, max_iters=3)
    cfg.experiment_name = "dist"
    cfg.custom_hooks = [dict(type="DGNRegroupHook", interval=1, stop=None), dict(type="SyncBuffersHook")]
    config_file = os.path.join(work_dir, f"tiny_dgn_rank{os.environ['RANK']}.py")
    cfg.dump(config_file)
    runner = train_tool.main([config_file, "--launcher", "pytorch", "--work-dir", work_dir])

    from dgn_plugins import dgn_layers

    rank = dist.get_rank()
    torch.save(
        {
            "world_size": dist.get_world_size(),
            "backend": dist.get_backend(),
            "wrapper": type(runner.model).__name__,
            "group_id": {name: layer.group_id.clone() for name, layer in dgn_layers(runner.model)},
            "num_regroups": {name: int(layer.num_regroups) for name, layer in dgn_layers(runner.model)},
        },
        os.path.join(work_dir, f"groupings_rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""The launcher: train_net.py flags, yacs and LazyConfig files, evaluation, CPU processes."""
import json
import os
import subprocess
import sys

import pytest

# "detectron2.config", not "detectron2": with tests/ on sys.path this folder
# would pass for a (namespace) package named detectron2.
pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

import torch  # noqa: E402
from d2_support import ROOT, config_path  # noqa: E402

from dgn_plugins.detectron2 import launcher  # noqa: E402

DEMO_DGN = config_path("demo_mask_rcnn_dgn.yaml")


def _tiny_opts(output_dir, max_iter=2):
    return [
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DGN.REGROUP.INTERVAL", "1", "MODEL.DGN.REGROUP.START", "0",
        "MODEL.DGN.REGROUP.STOP_SHARE", "1.0",  # regroup to the end: these runs check the mechanics
        "OUTPUT_DIR", str(output_dir),
    ]


def test_flags_are_train_nets_and_the_config_may_come_first():
    args = launcher.parse_args([DEMO_DGN, "--num-gpus", "2", "--resume", "SOLVER.MAX_ITER", "5"])
    assert args.config_file == DEMO_DGN and args.num_gpus == 2 and args.resume
    assert args.opts == ["SOLVER.MAX_ITER", "5"]
    args = launcher.parse_args(["--config-file", DEMO_DGN, "--eval-only", "--num-machines", "2",
                                "--machine-rank", "1", "--dist-url", "tcp://127.0.0.1:1234", "--work-dir", "out"])
    assert args.eval_only and args.num_machines == 2 and args.machine_rank == 1 and str(args.work_dir) == "out"
    with pytest.raises(SystemExit):
        launcher.parse_args([])


def test_train_then_eval_only_on_cpu(synthetic_coco_root, tmp_path):
    """The demo config, cut to 2 iterations: trains (cuda -> cpu), evaluates COCO AP, then --eval-only."""
    output_dir = tmp_path / "demo"
    results = launcher.main(["--config-file", DEMO_DGN, *_tiny_opts(output_dir)])
    assert set(results) >= {"bbox", "segm"}  # COCOEvaluator ran on the val split
    assert (output_dir / "model_final.pth").exists() and (output_dir / "config.yaml").exists()
    with open(output_dir / "metrics.json") as f:
        assert any("dgn/groups_changed" in json.loads(line) for line in f if line.strip())
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert any(key.endswith("num_regroups") and int(value) == 2 for key, value in final["model"].items())

    weights = str(output_dir / "model_final.pth")
    evaluated = launcher.main([DEMO_DGN, "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "eval")])
    assert evaluated["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"], nan_ok=True)


def test_two_cpu_processes_over_gloo(synthetic_coco_root, tmp_path):
    """``--num-gpus 2`` without CUDA: two processes, DDP over gloo, regroups kept in step."""
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "dgn_plugins.detectron2.launcher", "--config-file", DEMO_DGN,
        "--num-gpus", "2", "--dist-url", "auto", *_tiny_opts(output_dir), "DATASETS.TEST", "()",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    regroups = {int(v) for k, v in final["model"].items() if k.endswith("num_regroups")}
    assert regroups == {2}
    with open(output_dir / "log.txt") as f:
        log = f.read()
    assert "World size: 2" in log and "DGN regroup #2" in log


def test_norm_typo_is_one_error_line_from_tools_train_py(tmp_path):
    """Through our launcher a config error ends in one line on stderr, exit status 2, no traceback."""
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), DEMO_DGN, "--work-dir", str(tmp_path),
               "MODEL.FPN.NORM", "DNG", "MODEL.DEVICE", "cpu"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: MODEL.FPN.NORM = 'DNG' is not a norm Detectron2 knows. Did you mean 'DGN'? Accepted: '', 'BN', "
        "'SyncBN', 'FrozenBN', 'GN', 'nnSyncBN', 'naiveSyncBN', 'naiveSyncBN_N', 'LN', 'DGN'."]


def test_weights_with_other_norm_names_stop_in_one_line(synthetic_coco_root, tmp_path, captured_launcher):
    """MODEL.WEIGHTS whose stem norm is saved under another name: Detectron2 would log it and train on."""
    from d2_support import load_cfg

    from dgn_plugins.detectron2 import build_model
    from dgn_plugins.launch import cli  # what tools/train.py runs

    model = build_model(load_cfg(DEMO_DGN))
    state = {k.replace("stem.conv1.norm.", "stem.conv1.bn."): v for k, v in model.state_dict().items()}
    weights = tmp_path / "renamed.pth"
    torch.save({"model": state}, weights)
    output_dir = tmp_path / "out"
    status = cli([DEMO_DGN, *_tiny_opts(output_dir), "MODEL.WEIGHTS", str(weights)])
    err = captured_launcher.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert (f"checkpoint {weights} (MODEL.WEIGHTS) does not match the model's normalisation layers: the model's "
            "backbone.bottom_up.stem.conv1.norm.weight, backbone.bottom_up.stem.conv1.norm.bias not in the checkpoint; "
            "the checkpoint's backbone.bottom_up.stem.conv1.bn.weight, backbone.bottom_up.stem.conv1.bn.bias not in the "
            "model") in line
    assert not list(output_dir.glob("model_*.pth"))  # nothing trained

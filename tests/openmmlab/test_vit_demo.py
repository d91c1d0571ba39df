"""The tiny ViT demo pair (issue 19): configs/demo/fcn_tiny-vit_{gn,dgn}_demo.py.

The shipped configs (data roots and run length overridden on the command
line, nothing else) train through MMSegmentation's own ``tools/train.py`` on a
small generated ImageNet-S-like set; the DGN one regroups (its groupings
change), writes its records and resumes; ``tools/compare_miou.py`` (run as a
program) scores both runs' prediction PNGs and must report what the runs'
own ImageNetSIoUMetric logged.
"""
import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from dgn_plugins import TokenDynamicGroupNorm  # noqa: E402
from dgn_plugins.grouping import default_group_ids  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = {norm: os.path.join(ROOT, "configs", "demo", f"fcn_tiny-vit_{norm}_demo.py") for norm in ("gn", "dgn")}
FCN_DEMO = os.path.join(ROOT, "configs", "demo", "fcn_tiny_gn_demo.py")
VIT_BASE = os.path.join(ROOT, "configs", "mmseg", "_base_", "fcn_vit-b16-ln_8xb32-100ep-224x224.py")
#: The data settings the ViT pair shares with the FCN demo (through configs/demo/_base_/).
DATA_KEYS = ("custom_imports", "classes", "ignore_index", "crop_size", "dataset_type", "data_root", "train_pipeline",
             "test_pipeline", "val_dataloader", "test_dataloader", "val_evaluator", "test_evaluator")
#: 4 blocks of ln1 / ln2 and the final ln1, 64 channels in 8 groups.
NUM_NORMS, CHANNELS, GROUPS = 2 * 4 + 1, 64, 8
#: The test's run: 16 train images (4 per shape class) in batches of 4, 5 epochs of 4 iterations.
EPOCHS, BATCH = 5, 4
ITERS = EPOCHS * 16 // BATCH


# ------------------------------------------------------------------ the configs
def test_vit_demo_pair_is_the_vit_recipe_on_the_demo_data():
    gn, dgn = (Config.fromfile(DEMO[n]) for n in ("gn", "dgn"))
    fcn, vit = Config.fromfile(FCN_DEMO), Config.fromfile(VIT_BASE)
    dgn_dict = dgn.to_dict()
    assert dgn_dict.pop("custom_hooks") == [dict(type="DGNRegroupHook", interval=0.1, stop=0.9)]
    assert dgn_dict == gn.to_dict()  # DGN = GN + the regroup hook
    assert "custom_hooks" not in gn  # GN: never regrouped
    for key in DATA_KEYS:  # the FCN demo's data, inherited
        if key == "custom_imports":
            assert gn[key].imports == fcn[key].imports + ["dgn_plugins.openmmlab.resumable"]
        else:
            assert gn[key] == fcn[key], key
    assert gn.train_dataloader.dataset == fcn.train_dataloader.dataset
    assert gn.train_dataloader.sampler == vit.vit_train_dataloader.sampler  # epoch-based, as the recipe
    for key in ("patch_bias", "qkv_bias", "with_cls_token", "final_norm", "mlp_ratio", "drop_path_rate"):
        assert gn.model.backbone[key] == vit.model.backbone[key], key  # the recipe's ViT, shrunk
    head = dict(gn.model.decode_head, in_channels=768, channels=768, num_classes=920)
    assert head == vit.model.decode_head  # the recipe's head, at the tiny ViT's width and the demo's classes
    assert gn.optim_wrapper.constructor == vit.optim_wrapper.constructor
    assert [s.type for s in gn.param_scheduler] == [s.type for s in vit.param_scheduler]

    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(copy.deepcopy(gn.model))
    norms = [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, (torch.nn.LayerNorm,
                                                                                  torch.nn.GroupNorm))]
    assert len(norms) == NUM_NORMS
    for name, layer in norms:
        assert type(layer) is TokenDynamicGroupNorm, name
        assert (layer.num_channels, layer.num_groups, layer.over, layer.eps) == (CHANNELS, GROUPS, "token", 1e-6)
    assert sum(p.numel() for p in model.parameters()) < 300_000  # tiny: about a minute on one core


# -------------------------------------------- trained by mmseg's own tools/train.py
def mmseg_train_py():
    import mmseg

    return os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", "train.py")


def run(*argv, timeout=600):
    """A program in a subprocess, this checkout's ``dgn_plugins`` first on the path, one torch thread."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def train(norm, work_dir, data_root, predictions, *extra):
    """The shipped demo config with only the data root, the run's length and the prediction folder overridden."""
    options = [f"{split}_dataloader.dataset.data_root={data_root}" for split in ("train", "val", "test")]
    options += [f"train_dataloader.batch_size={BATCH}", f"train_cfg.max_epochs={EPOCHS}",
                f"train_cfg.val_interval={EPOCHS}", "default_hooks.checkpoint.interval=1",
                "default_hooks.checkpoint.max_keep_ckpts=-1", "default_hooks.logger.interval=1",
                f"val_evaluator.output_dir={predictions}"]
    return run(mmseg_train_py(), DEMO[norm], "--work-dir", work_dir, *extra, "--cfg-options", *options)


def final_metrics(output):
    """The last validation's mIoU and mIoU_official, as the run logged them."""
    found = re.findall(r"mIoU: (\d+\.\d+)\s+mAcc: \d+\.\d+\s+mIoU_official: (\d+\.\d+)", output)
    assert found, output[-3000:]
    return tuple(float(v) for v in found[-1])


def train_iterations(output):
    """The iterations the run logged (every one: logger interval 1)."""
    return [int(i) for i in re.findall(rf"Iter\(train\) \[\s*(\d+)/{ITERS}\]", output)]


def records(work_dir):
    """The regroup records (none when the run never regrouped)."""
    path = os.path.join(work_dir, "dgn_groups.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def group_ids(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("backbone.") and k.endswith(".group_id")}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's generator, smaller: 4 train-semi and 2 validation images per shape class (64 px)."""
    from dgn_plugins.data.synthetic_seg import SyntheticSegSpec, ensure_synthetic_seg

    return ensure_synthetic_seg(str(tmp_path_factory.mktemp("data") / "imagenets_synthetic"),
                                SyntheticSegSpec(train_per_class=4, val_per_class=2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data):
    """GN trained; DGN trained, then resumed from its epoch-2 checkpoint (the last epochs trained again)."""
    out = tmp_path_factory.mktemp("runs")
    result = {}
    for norm in ("gn", "dgn"):
        work_dir, predictions = str(out / norm), str(out / f"{norm}_pred")
        result[norm] = dict(work_dir=work_dir, predictions=predictions,
                            output=train(norm, work_dir, demo_data, predictions))
    dgn = result["dgn"]
    dgn["first_records"] = records(dgn["work_dir"])
    dgn["first_groups"] = group_ids(os.path.join(dgn["work_dir"], f"epoch_{EPOCHS}.pth"))
    resume_from = os.path.join(dgn["work_dir"], "epoch_2.pth")
    dgn["resumed_output"] = train("dgn", dgn["work_dir"], demo_data, dgn["predictions"], "--resume",
                                  f"--cfg-options=load_from={resume_from}")
    return result


def test_gn_demo_trains_and_never_regroups(runs):
    gn = runs["gn"]
    groups = group_ids(os.path.join(gn["work_dir"], f"epoch_{EPOCHS}.pth"))
    assert len(groups) == NUM_NORMS
    assert all(torch.equal(ids, default_group_ids(CHANNELS, GROUPS)) for ids in groups.values())
    assert not os.path.exists(os.path.join(gn["work_dir"], "dgn_groups.jsonl"))
    assert train_iterations(gn["output"]) == list(range(1, ITERS + 1))  # the whole run: 16 images in batches of 4


def test_dgn_demo_regroups_writes_records_and_resumes(runs):
    dgn = runs["dgn"]
    # Every 10% of 20 iterations, none in the last 10%: iterations 2, 4, ..., 18.
    steps = [r["step"] for r in dgn["first_records"]]
    assert steps == list(range(2, ITERS, 2)), "no regroup records" if not steps else steps
    last = dgn["first_records"][-1]["group_id"]  # every ViT norm recorded; the last record is the final grouping
    assert sorted(name + ".group_id" for name in last) == sorted(dgn["first_groups"])
    for name, ids in last.items():
        assert torch.equal(torch.as_tensor(ids), dgn["first_groups"][name + ".group_id"]), name
    changed = [k for k, ids in dgn["first_groups"].items() if not torch.equal(ids, default_group_ids(CHANNELS, GROUPS))]
    assert changed, "no grouping changed"
    assert torch.load(os.path.join(dgn["work_dir"], "epoch_2.pth"), map_location="cpu",
                      weights_only=False)["dgn_regroup_hook"]["regroups_done"] == 4  # 2, 4, 6, 8

    assert "resumed" in dgn["resumed_output"].lower()
    assert train_iterations(dgn["resumed_output"]) == list(range(9, ITERS + 1))  # epochs 3-5 only
    again = records(dgn["work_dir"])
    assert again[:4] == dgn["first_records"][:4]  # the regroups up to the checkpoint kept, the later made again
    assert [r["step"] for r in again] == steps
    resumed_groups = group_ids(os.path.join(dgn["work_dir"], f"epoch_{EPOCHS}.pth"))
    assert any(not torch.equal(ids, default_group_ids(CHANNELS, GROUPS)) for ids in resumed_groups.values())


def test_compare_miou_scores_both_runs_as_their_metric_did(runs, demo_data):
    gn, dgn = runs["gn"], runs["dgn"]
    report = run(os.path.join(ROOT, "tools", "compare_miou.py"), "--gt",
                 os.path.join(demo_data, "validation-segmentation"), "--preds", f"GN={gn['predictions']}",
                 f"DGN={dgn['predictions']}", "--num-classes", "5", "--label-encoding", "rgb", "--format", "json",
                 "--per-class", "--class-names", DEMO["gn"])
    table = json.loads(report)
    assert table["labels"] == ["GN", "DGN"] and table["baseline"] == "GN"
    rows = next(s["rows"] for s in table["sections"] if s["title"] == "semantic segmentation")
    values = {label: {row["metric"]: row["values"][label] for row in rows} for label in ("GN", "DGN")}
    assert {row["metric"]: row["deltas"]["DGN"] for row in rows} == pytest.approx(
        {m: values["DGN"][m] - values["GN"][m] for m in values["GN"]})
    # What each run's ImageNetSIoUMetric logged (rounded to 2 decimals); DGN's last validation is the resumed run's.
    for label, output in (("GN", gn["output"]), ("DGN", dgn["resumed_output"])):
        miou, official = final_metrics(output)
        assert values[label]["mIoU (mmseg IoUMetric)"] == pytest.approx(miou, abs=0.006), label
        assert values[label]["mIoU (ImageNet-S)"] == pytest.approx(official, abs=0.006), label
    assert any("5 classes, ignore index 1000, rgb label maps" in note for note in table["notes"])
    per_class = next(s["rows"] for s in table["sections"] if s["title"].startswith("IoU per class"))
    assert [row["metric"] for row in per_class] == ["others", "circle", "square", "triangle", "cross"]

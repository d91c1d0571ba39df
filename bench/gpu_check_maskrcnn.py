"""Mask R-CNN R50-FPN train steps with GN and with DGN: time and peak memory side by side (``bench/gpu_check.py``).

The models are the configs a user trains, built through MMEngine's config and
registry as ``tools/train.py`` does: mmdet's
``gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py`` and its DGN twin in this
repository, with no pretrained download (random initialisation; the DGN model
loads the GN model's weights). Three candidates:

- ``GN``: ``nn.GroupNorm`` everywhere;
- ``DGN (GN's grouping)``: what a DGN run starts with;
- ``DGN (ragged)``: every layer given a ragged, shuffled grouping, as after regroups.

Each step is ``model.train_step`` on one batch of images with boxes and masks
(``mmdet.testing.demo_mm_inputs``, by default 2 images of 800x1216: COCO's
training size), SGD with learning rate 0, so that every step does the same
work (same proposals, same sampled RoIs). Steps of the three alternate
(``bench/common.py``), medians are reported. Peak memory is
``torch.cuda.max_memory_allocated`` over one step of the candidate, minus what
the other two hold: the figure a run with that model alone would show.
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from common import interleaved_medians

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GN_CONFIG = "mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py"
DGN_CONFIG = os.path.join(ROOT, "configs", "mmdet", "mask-rcnn_r50_fpn_dgn-all_2x_coco.py")
CANDIDATES = ("GN", "DGN (GN's grouping)", "DGN (ragged)")


def build(config: str, adjust: Optional[Callable] = None):
    """The config's model, random initialisation (no download); ``adjust(cfg)`` may change the config first."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from dgn_plugins.openmmlab.launcher import resolve_config_path

    cfg = Config.fromfile(resolve_config_path(config))
    cfg.model.backbone.init_cfg = None
    if adjust is not None:
        adjust(cfg)
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def _ragged(model) -> int:
    """Give every DGN layer a ragged shuffled grouping within its bounds; the number of layers."""
    from bench_layer import ragged_group_ids

    from dgn_plugins import dgn_layers

    layers = dgn_layers(model)
    for index, (_, layer) in enumerate(layers):
        layer.set_group_ids(ragged_group_ids(layer.num_channels, layer.num_groups, seed=index))
    return len(layers)


def _resident_bytes(model, optimizer) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(device: str = "cuda", steps: int = 20, warmup: int = 3, batch: int = 2,
            image_size: Tuple[int, int] = (800, 1216), adjust: Optional[Callable] = None) -> List[Dict[str, object]]:
    """One row per candidate: median step seconds, its ratio to GN's, peak MiB (CUDA only)."""
    from mmdet.testing import demo_mm_inputs
    from mmengine.optim import OptimWrapper

    from dgn_plugins import DynamicGroupNorm, use_backend

    torch.manual_seed(0)
    gn = build(GN_CONFIG, adjust)
    dgn = build(DGN_CONFIG, adjust)
    dgn.load_state_dict(gn.state_dict())  # GN's weights, GN's grouping
    ragged = copy.deepcopy(dgn)
    layers = _ragged(ragged)
    models = {"GN": gn, "DGN (GN's grouping)": dgn, "DGN (ragged)": ragged}
    assert not any(isinstance(m, DynamicGroupNorm) for m in gn.modules()) and layers, "the configs changed"
    wrappers = {}
    for name, model in models.items():
        model.to(device).train()
        wrappers[name] = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4))
    data = demo_mm_inputs(batch_size=batch, image_shapes=[(3, *image_size)] * batch, num_items=[8] * batch,
                          num_classes=80, with_mask=True)
    on_cuda = torch.device(device).type == "cuda"

    def step(name):
        def run():
            torch.manual_seed(0)  # the same sampled proposals for every candidate and step
            models[name].train_step(data, wrappers[name])
            if on_cuda:
                torch.cuda.synchronize()
        return run

    with use_backend("native"):  # the dispatcher's kernels: Triton on CUDA tensors
        seconds = interleaved_medians({name: step(name) for name in models}, repeats=steps, warmup=warmup)
        peaks = {}
        for name in models:
            if on_cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                step(name)()
                alone = torch.cuda.max_memory_allocated() - before + _resident_bytes(models[name], wrappers[name].optimizer)
                peaks[name] = alone / 2**20
    return [{"candidate": name, "seconds": seconds[name], "ratio": seconds[name] / seconds["GN"],
             "peak_mib": peaks.get(name), "peak_ratio": peaks[name] / peaks["GN"] if peaks else None,
             "dgn_layers": 0 if name == "GN" else layers} for name in models]


def markdown_table(rows: List[Dict[str, object]], batch: int, image_size: Tuple[int, int]) -> str:
    """The rows as a markdown table."""
    lines = [f"Mask R-CNN R50-FPN, {batch} images of {image_size[0]}x{image_size[1]}, one train step "
             f"(forward, losses, backward, SGD), median; peak: torch.cuda.max_memory_allocated of that model alone",
             "", "| model | norm layers as DGN | step ms | vs GN | peak MiB | vs GN |", "|---|--:|--:|--:|--:|--:|"]
    for row in rows:
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        peak_ratio = "-" if row["peak_ratio"] is None else f"{row['peak_ratio']:.3f}"
        lines.append(f"| {row['candidate']} | {row['dgn_layers']} | {row['seconds'] * 1e3:.1f} | {row['ratio']:.3f} | "
                     f"{peak} | {peak_ratio} |")
    return "\n".join(lines)

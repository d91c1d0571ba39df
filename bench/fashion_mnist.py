"""Fashion-MNIST(-C) pieces for the DGN study: data splits, a small GN ResNet, training, error rates.

Data: Debian's package, offline::

    apt-get update && apt-get install -y dataset-fashion-mnist
    # -> /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

Images are padded to 32x32 (the corruption library's minimum). The 60,000
training images are split once, by a fixed permutation, into 55,000 for
training and 5,000 for validation (model selection); the 10,000 test images
are only ever scored by the final comparison.

With ``augmix`` (the poster's "A" setting), each batch also goes through AugMix
twice and the loss is cross-entropy on the clean images plus 12 x the
Jensen-Shannon consistency of the three views (``dgn_plugins.augmix``); the
AugMix draws depend only on the seed and the step, like the batches.

Training records the regroups' effect on the loss: right before and right
after each regroup the loss on a fixed probe set of training images (eval
mode, same weights), then how many iterations it takes the probe loss to get
back to its value before the regroup.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgn_plugins import regroup_model
from dgn_plugins.augmix import AugMixJSDLoss, AugMixParams, augment_batch
from dgn_plugins.training.schedule import RegroupSchedule

DATA_ROOT = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
PIXEL_MEAN, PIXEL_STD = 0.286, 0.353  # Fashion-MNIST training set
NUM_CLASSES = 10
VALIDATION_IMAGES = 5000
SPLIT_SEED = 20261205


class MissingDataError(RuntimeError):
    pass


# ------------------------------------------------------------------ data
def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a 4-byte magic."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load_split(root: Path, split: str):
    """uint8 images [N, 32, 32] (zero-padded) and int64 labels [N] of ``train``, ``val`` or ``test``."""
    source = "test" if split == "test" else "train"
    paths = [Path(root) / name for name in DATA_FILES[source]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingDataError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install it with\n"
            "    apt-get update && apt-get install -y dataset-fashion-mnist\n"
            "or point --data-root at a folder holding the four *-ubyte.gz files.")
    images, labels = _read_idx(paths[0]), _read_idx(paths[1]).astype(np.int64)
    if source == "train":
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        keep = order[-VALIDATION_IMAGES:] if split == "val" else order[:-VALIDATION_IMAGES]
        images, labels = images[keep], labels[keep]
    return np.pad(images, ((0, 0), (2, 2), (2, 2))), labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)


# ------------------------------------------------------------------ model
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(cout // group_size, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(cout // group_size, cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // group_size, cout))

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-8-like with GN everywhere: a stride-``stem_stride`` stem, three one-block
    stages (width, 2x, 4x), global pooling, a linear head."""

    def __init__(self, width: int = 32, group_size: int = 8, stem_stride: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stem_stride, 1, bias=False),
                                  nn.GroupNorm(width // group_size, width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(BasicBlock(width, width, 1, group_size),
                                    BasicBlock(width, 2 * width, 2, group_size),
                                    BasicBlock(2 * width, 4 * width, 2, group_size))
        self.head = nn.Linear(4 * width, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


# ------------------------------------------------------------------ training
@dataclass
class RegroupEvent:
    """One regroup seen from the loss: probe loss right before and after, and the recovery."""

    step: int
    channels_moved: int
    groups_dissolved: int
    loss_before: float
    loss_after: float
    recovery_iters: Optional[int] = None  # None: not back within the window
    window: int = 0

    @property
    def jump(self) -> float:
        return self.loss_after - self.loss_before


@dataclass
class TrainLog:
    events: List[RegroupEvent] = field(default_factory=list)
    final_train_loss: float = math.nan


@torch.no_grad()
def mean_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    """Cross-entropy over ``images`` in eval mode (DGN: no statistics update), model mode restored."""
    was_training = model.training
    model.eval()
    total = sum(float(F.cross_entropy(model(images[i:i + batch]), labels[i:i + batch], reduction="sum"))
                for i in range(0, len(images), batch))
    model.train(was_training)
    return total / len(images)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, iters: int, batch: int, lr: float,
          seed: int, schedule: Optional[RegroupSchedule] = None, probe: int = 512, probe_every: int = 20,
          recovery_window: int = 400, augmix: Optional[AugMixParams] = None,
          raw_images: Optional[np.ndarray] = None) -> TrainLog:
    """SGD (Nesterov) + cosine LR, random flips; batches depend only on ``seed``, so GN and
    DGN runs of one seed see the same data. DGN regroups on ``schedule``. With ``augmix``
    (and ``raw_images``, the uint8 images ``images`` was made from): AugMix + JSD training."""
    if augmix is not None and (raw_images is None or len(raw_images) != len(images)):
        raise ValueError("AugMix training needs raw_images: the uint8 images behind images, one per row")
    jsd_loss = AugMixJSDLoss(views=3, jsd_weight=12.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    gen = torch.Generator().manual_seed(10_000 + seed)
    probe_index = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:probe]
    probe_x, probe_y = images[probe_index], labels[probe_index]
    log, open_event, smoothed = TrainLog(), None, None
    model.train()
    for step in range(1, iters + 1):
        index = torch.randint(len(images), (batch,), generator=gen)
        x = images[index]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if augmix is None:
            loss = F.cross_entropy(model(x), labels[index])
        else:
            loss = jsd_loss(model(torch.cat([x, *_augmix_views(raw_images, index, flip, augmix, seed, step)])),
                            labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / iters))
        if open_event is not None and (step - open_event.step) % probe_every == 0:
            since = step - open_event.step
            if mean_loss(model, probe_x, probe_y) <= open_event.loss_before:
                open_event.recovery_iters, open_event = since, None
            elif since >= open_event.window:
                open_event = None
        if schedule is not None and schedule.is_due(step):
            before = mean_loss(model, probe_x, probe_y)
            reports = [r for r in regroup_model(model) if r.skipped is None]
            schedule.mark_done(step)
            after = mean_loss(model, probe_x, probe_y)
            window = min(recovery_window, iters - step)
            if schedule.interval < window:
                window = schedule.interval
            event = RegroupEvent(step, sum(r.channels_moved for r in reports),
                                 sum(r.groups_dissolved for r in reports), before, after, window=window)
            log.events.append(event)
            if after <= before:
                event.recovery_iters = 0
            else:
                open_event = event
    log.final_train_loss = smoothed
    model.eval()
    return log


def _augmix_views(raw_images: np.ndarray, index: torch.Tensor, flip: torch.Tensor, params: AugMixParams,
                  seed: int, step: int):
    """Two AugMix views of the (flipped) batch, normalised like the clean one; draws seeded by (seed, step)."""
    raw = raw_images[index.numpy()]
    raw = np.where(flip.numpy()[:, None, None], raw[:, :, ::-1], raw)
    rng = np.random.default_rng([20_000 + seed, step])
    return [to_tensor(augment_batch(raw, rng, params)) for _ in range(2)]


@torch.no_grad()
def error_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    wrong = sum(int((model(images[i:i + batch]).argmax(1) != labels[i:i + batch]).sum())
                for i in range(0, len(images), batch))
    return 100.0 * wrong / len(images)

"""mIoU and aAcc of several semantic-segmentation prediction sets, side by side.

Per image the four histograms of MMSegmentation's ``IoUMetric.intersect_and_union``
(intersection, union, prediction, label; pixels whose label is the ignore index
dropped, values outside ``[0, num_classes)`` not counted, as ``torch.histc``
does) are built with ``np.bincount`` and summed over the dataset in int64. Two
means are reported from the same totals:

* MMSegmentation ``IoUMetric``: ``nanmean(I / U)``; a class with ``U == 0``
  is NaN and skipped (torchmetrics' ``MulticlassJaccardIndex(average="macro")``
  gives the same).
* official ImageNet-S evaluator: ``mean(I / (U + 1e-10))`` over all classes,
  class 0 "others" included, absent classes counting as 0.

Inputs: PNG folders matched by file name (MMSegmentation 1.x ``tools/test.py
--out DIR`` writes ``<image stem>.png`` through ``IoUMetric(output_dir=...)``),
or an mmengine ``DumpResults`` pickle (dicts with ``img_path`` and
``pred_sem_seg['data']``). ``index`` PNGs hold class ids; ``rgb`` PNGs hold
ImageNet-S ids ``R + 256 * G`` with 1000 meaning ignore.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...cli import ToolParser, existing_dir, existing_path, integer
from . import ComparisonError, read_results_file
from .report import Comparison, add_output_arguments, add_result_sets, run_tool

ENCODINGS = ("index", "rgb")
DEFAULT_IGNORE = {"index": 255, "rgb": 1000}
IMAGENET_S_EPS = 1e-10  # the official evaluator's TP / (T + P - TP + 1e-10)


# ----------------------------------------------------------------- reading label maps

def decode_label_map(array: np.ndarray, encoding: str, source) -> np.ndarray:
    """Class ids as int64 HxW: single-channel as is, RGB as ``R + 256 * G``."""
    if encoding == "index":
        if array.ndim != 2:
            raise ComparisonError(f"{source}: expected a single-channel label map, got shape "
                                  f"{array.shape} (use --label-encoding rgb for R + 256*G maps)")
        return array.astype(np.int64)
    if encoding == "rgb":
        if array.ndim != 3 or array.shape[2] < 3:
            raise ComparisonError(f"{source}: expected an RGB label map for --label-encoding rgb, "
                                  f"got shape {array.shape}")
        return array[:, :, 0].astype(np.int64) + 256 * array[:, :, 1].astype(np.int64)
    raise ValueError(f"unknown label encoding {encoding!r}")


def read_label_png(path: Path, encoding: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except OSError as err:
        raise ComparisonError(f"{path}: cannot read the image ({err})") from err
    return decode_label_map(array, encoding, path)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """MMSegmentation's ``LoadAnnotations(reduce_zero_label=True)``: 0 -> 255, k -> k-1.

    Also undoes the ``+ 1`` ``IoUMetric`` adds to PNGs it writes for such datasets.
    """
    reduced = label - 1
    reduced[label == 0] = 255
    reduced[reduced == 254] = 255
    return reduced


def _key(name: str, suffix: str) -> str:
    """Match key of a file: its name without ``suffix`` (else without extension)."""
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else os.path.splitext(name)[0]


def label_files(folder: Path, suffix: str) -> Dict[str, Path]:
    """Files under ``folder`` (recursively) ending in ``suffix``, by match key."""
    files: Dict[str, Path] = {}
    for path in sorted(folder.rglob(f"*{suffix}")):
        if not path.is_file():
            continue
        key = _key(path.name, suffix)
        if key in files:
            raise ComparisonError(f"{folder}: two files match as '{key}': {files[key]} and {path}")
        files[key] = path
    if not files:
        raise ComparisonError(f"{folder}: no files ending in '{suffix}'")
    return files


@dataclass
class PredictionSet:
    """One labelled prediction source: match key -> loader of an int64 label map."""

    label: str
    path: Path
    source: str
    loaders: Dict[str, Callable[[], np.ndarray]]
    origins: Dict[str, str]  # key -> file (or pickle entry) named in errors


def _png_set(label: str, folder: Path, encoding: str, suffix: str, reduce: bool) -> PredictionSet:
    files = label_files(folder, suffix)

    def loader(path: Path) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            array = read_label_png(path, encoding)
            return reduce_zero_label(array) if reduce else array
        return load

    return PredictionSet(label, folder, "PNG folder", {k: loader(p) for k, p in files.items()},
                         {k: str(p) for k, p in files.items()})


def _pickle_set(label: str, path: Path, suffix: str) -> PredictionSet:
    """mmengine ``DumpResults`` output: class ids already in the evaluated label space."""
    data = read_results_file(path)
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        raise ComparisonError(f"{path}: expected a non-empty list of per-image result dicts")
    loaders: Dict[str, Callable[[], np.ndarray]] = {}
    origins: Dict[str, str] = {}
    for idx, sample in enumerate(data):
        if "img_path" not in sample or "pred_sem_seg" not in sample:
            raise ComparisonError(f"{path}: entry {idx} lacks 'img_path' or 'pred_sem_seg'")
        seg = sample["pred_sem_seg"]
        seg = seg["data"] if isinstance(seg, dict) else seg
        array = seg.detach().cpu().numpy() if hasattr(seg, "detach") else np.asarray(seg)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        key = _key(os.path.basename(str(sample["img_path"])), suffix)
        if key in loaders:
            raise ComparisonError(f"{path}: two entries match as '{key}'")
        origin = f"{path}[{idx}] ({sample['img_path']})"
        array = decode_label_map(array, "index", origin)
        loaders[key] = lambda array=array: array
        origins[key] = origin
    return PredictionSet(label, path, "mmengine DumpResults pickle", loaders, origins)


def load_prediction_set(label: str, path: Path, encoding: str, suffix: str,
                        reduce: bool) -> PredictionSet:
    path = Path(path)
    if path.is_dir():
        return _png_set(label, path, encoding, suffix, reduce)
    if path.is_file():
        return _pickle_set(label, path, suffix)
    raise ComparisonError(f"{path}: no such folder or file")


# ----------------------------------------------------------------- arithmetic

@dataclass
class AreaTotals:
    """Dataset sums of ``IoUMetric.intersect_and_union`` (exact int64 counts)."""

    num_classes: int
    intersect: np.ndarray = None
    union: np.ndarray = None
    pred: np.ndarray = None
    label: np.ndarray = None
    uncounted_pred_pixels: int = 0  # predicted ids outside [0, num_classes)
    uncounted_label_pixels: int = 0  # label ids outside [0, num_classes), not ignored

    def __post_init__(self):
        for name in ("intersect", "union", "pred", "label"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.num_classes, dtype=np.int64))

    def add(self, pred: np.ndarray, label: np.ndarray, ignore_index: int) -> None:
        intersect, union, area_pred, area_label = intersect_and_union(
            pred, label, self.num_classes, ignore_index)
        self.intersect += intersect
        self.union += union
        self.pred += area_pred
        self.label += area_label
        kept = label != ignore_index
        self.uncounted_pred_pixels += int(kept.sum() - area_pred.sum())
        self.uncounted_label_pixels += int(kept.sum() - area_label.sum())


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int) -> Tuple[np.ndarray, ...]:
    """``IoUMetric.intersect_and_union`` with ``np.bincount`` for ``torch.histc``.

    For integer ids ``histc(bins=n, min=0, max=n-1)`` puts id ``k`` in bin ``k``
    and drops ids outside ``[0, n-1]``; ``bincount`` of the in-range ids is the
    same histogram, counted exactly.
    """
    kept = label != ignore_index
    pred, label = pred[kept], label[kept]

    def histogram(ids: np.ndarray) -> np.ndarray:
        ids = ids[(ids >= 0) & (ids < num_classes)]
        return np.bincount(ids, minlength=num_classes).astype(np.int64)

    area_intersect = histogram(pred[pred == label])
    area_pred = histogram(pred)
    area_label = histogram(label)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def mmseg_iou(totals: AreaTotals) -> np.ndarray:
    """Per-class IoU in percent; NaN where the class is in neither map."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return totals.intersect / totals.union * 100


def mmseg_miou(totals: AreaTotals) -> float:
    iou = mmseg_iou(totals)
    return float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else float("nan")


def imagenet_s_miou(totals: AreaTotals) -> float:
    """The ImageNet-S evaluator's mean over every class, absent ones as 0."""
    return float(np.mean(totals.intersect / (totals.union + IMAGENET_S_EPS)) * 100)


def pixel_accuracy(totals: AreaTotals) -> float:
    """aAcc: correctly labelled pixels over counted label pixels, in percent."""
    counted = totals.label.sum()
    return float(totals.intersect.sum() / counted * 100) if counted else float("nan")


# ----------------------------------------------------------------- comparison

def _check_keys(gt_keys: Sequence[str], pset: PredictionSet, gt_dir: Path) -> None:
    missing = sorted(set(gt_keys) - set(pset.loaders))
    extra = sorted(set(pset.loaders) - set(gt_keys))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no prediction for {len(missing)} ground-truth image(s), "
                         f"e.g. {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} prediction(s) without ground truth in {gt_dir}, "
                         f"e.g. {extra[:3]}")
        raise ComparisonError(f"{pset.path}: " + "; ".join(parts)
                              + " (files are matched by name; see --gt-suffix/--pred-suffix)")


def read_class_names(path: Optional[Path], num_classes: int) -> List[str]:
    """Names for the per-class rows: from ``path`` (see :func:`class_names_from`), else ``class i``."""
    if path is None:
        return [f"class {i}" for i in range(num_classes)]
    names = class_names_from(str(path))
    if len(names) != num_classes:
        raise ComparisonError(f"{path}: {len(names)} class names for --num-classes {num_classes}")
    return names


def class_names_from(source: str) -> List[str]:
    """Class names from a text file (one per line), an MMSegmentation config (its test set's
    ``metainfo.classes``, else its dataset type's), or a registered dataset name (``ADE20KDataset``)."""
    if source.endswith(".py"):
        return _config_class_names(source)
    if os.path.isfile(source) or os.sep in source or "." in source:
        try:
            return [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
        except OSError as err:
            raise ComparisonError(f"{source}: cannot read class names ({err})") from err
    return _dataset_class_names(source, {})


def _dataset_class_names(dataset_type: str, dataset_cfg) -> List[str]:
    try:
        from mmseg.registry import DATASETS
        from mmseg.utils import register_all_modules
    except ImportError as err:
        raise ComparisonError(f"--class-names {dataset_type}: a dataset name needs MMSegmentation ({err})") from None
    register_all_modules(init_default_scope=False)
    import dgn_plugins.openmmlab  # noqa: F401  (our datasets, e.g. ImageNetSDataset)

    dataset_cls = DATASETS.get(dataset_type)
    if dataset_cls is None:
        raise ComparisonError(f"--class-names {dataset_type}: no such dataset in MMSegmentation's registry "
                              "(give a text file, a config or a dataset class name such as ADE20KDataset)")
    classes = dataset_cls.METAINFO.get("classes")
    if not classes and dataset_type == "ImageNetSDataset" and dataset_cfg.get("subset"):
        from ...openmmlab.imagenet_s.classes import classes_of_subset

        classes = classes_of_subset(dataset_cfg["subset"])
    if not classes:
        raise ComparisonError(f"--class-names {dataset_type}: the dataset names no classes in its METAINFO")
    return [str(name) for name in classes]


def _config_class_names(path: str) -> List[str]:
    try:
        from mmengine.config import Config

        cfg = Config.fromfile(path)
    except Exception as err:  # a config that does not load: say so in one line
        raise ComparisonError(f"{path}: cannot load the config ({' '.join(str(err).split())[:200]})") from None
    loader = cfg.get("test_dataloader") or cfg.get("val_dataloader") or {}
    dataset = loader.get("dataset", {}) if isinstance(loader, dict) else {}
    while isinstance(dataset.get("dataset"), dict):  # wrappers such as RepeatDataset
        dataset = dataset["dataset"]
    classes = (dataset.get("metainfo") or {}).get("classes")
    if classes:
        return [str(name) for name in classes]
    if not dataset.get("type"):
        raise ComparisonError(f"{path}: no test_dataloader.dataset with classes or a type")
    return _dataset_class_names(dataset["type"], dataset)


def accumulate(gt_dir: Path, sets: Sequence[PredictionSet], num_classes: int, ignore_index: int,
               encoding: str, gt_suffix: str, reduce: bool) -> Dict[str, AreaTotals]:
    """Histogram totals per set, reading each ground-truth map once."""
    gt_files = label_files(gt_dir, gt_suffix)
    for pset in sets:
        _check_keys(list(gt_files), pset, gt_dir)
    totals = {pset.label: AreaTotals(num_classes) for pset in sets}
    for key, gt_path in gt_files.items():
        label = read_label_png(gt_path, encoding)
        if reduce:
            label = reduce_zero_label(label)
        for pset in sets:
            pred = pset.loaders[key]()
            if pred.shape != label.shape:
                raise ComparisonError(f"{pset.origins[key]}: prediction shape {pred.shape} differs "
                                      f"from ground truth {gt_path} shape {label.shape}")
            totals[pset.label].add(pred, label, ignore_index)
    return totals


def compare_miou(gt_dir: Path, predictions: Sequence[Tuple[str, Path]], num_classes: int,
                 ignore_index: Optional[int] = None, encoding: str = "index",
                 per_class: bool = False, reduce: bool = False, gt_suffix: str = ".png",
                 pred_suffix: str = ".png", class_names: Optional[Path] = None) -> Comparison:
    """Score every labelled prediction set on the same ground truth, side by side."""
    if num_classes < 1:
        raise ComparisonError(f"--num-classes must be positive, got {num_classes}")
    if encoding not in ENCODINGS:
        raise ComparisonError(f"unknown label encoding {encoding!r}; choose one of {ENCODINGS}")
    if reduce and encoding != "index":
        raise ComparisonError("--reduce-zero-label applies to index label maps only")
    if not predictions:
        raise ComparisonError("no prediction sets given")
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise ComparisonError(f"{gt_dir}: ground truth must be a folder of PNG label maps")
    ignore = DEFAULT_IGNORE[encoding] if ignore_index is None else ignore_index
    names = read_class_names(class_names, num_classes)
    sets = [load_prediction_set(label, path, encoding, pred_suffix, reduce)
            for label, path in predictions]
    totals = accumulate(gt_dir, sets, num_classes, ignore, encoding, gt_suffix, reduce)

    comparison = Comparison(labels=[pset.label for pset in sets], unit="%")
    comparison.add_section("semantic segmentation",
                           ["mIoU (mmseg IoUMetric)", "mIoU (ImageNet-S)", "aAcc"],
        {label: [mmseg_miou(t), imagenet_s_miou(t), pixel_accuracy(t)]
         for label, t in totals.items()})
    if per_class:
        comparison.add_section("IoU per class (n/a = class in neither map)", names,
                               {label: mmseg_iou(t).tolist() for label, t in totals.items()})
    comparison.notes += [
        f"{num_classes} classes, ignore index {ignore}, {encoding} label maps"
        + (", reduce_zero_label" if reduce else "") + ".",
        "mIoU (mmseg IoUMetric): mean IoU over the classes present in ground truth or "
        "prediction (torchmetrics MulticlassJaccardIndex macro).",
        f"mIoU (ImageNet-S): mean over all {num_classes} classes, class 0 included and "
        "absent classes counted as 0, as the official ImageNet-S evaluator does.",
        "aAcc: correctly labelled pixels over all non-ignored pixels."]
    for pset in sets:
        t = totals[pset.label]
        comparison.notes.append(f"set '{pset.label}': {pset.source} {pset.path}")
        if t.uncounted_pred_pixels:
            comparison.notes.append(
                f"set '{pset.label}': {t.uncounted_pred_pixels} predicted pixels have ids outside "
                f"[0, {num_classes}) and were not counted (as in IoUMetric); check --num-classes")
    uncounted_labels = next(iter(totals.values())).uncounted_label_pixels
    if uncounted_labels:
        comparison.notes.append(
            f"{uncounted_labels} ground-truth pixels have ids outside [0, {num_classes}) other "
            f"than the ignore index {ignore} and were not counted; check --num-classes")
    return comparison


# ----------------------------------------------------------------- command line

def build_parser() -> ToolParser:
    parser = ToolParser(
        prog="compare_miou.py",
        description="Compare mIoU/aAcc of several semantic-segmentation prediction sets "
                    "(e.g. GN vs DGN). Deltas are against the first set.")
    parser.add_argument("--gt", required=True, type=existing_dir, help="folder of ground-truth PNGs")
    add_result_sets(parser, "--preds", "--results", path_type=existing_path,
                    help="PNG folders (e.g. mmseg tools/test.py --out DIR) or mmengine DumpResults .pkl files")
    parser.add_argument("--num-classes", required=True, type=integer(1),
                        help="number of class ids, 0 included (ImageNet-S-50: 51)")
    parser.add_argument("--ignore-index", type=integer(0),
                        help="label id left out (default 255; 1000 with --label-encoding rgb)")
    parser.add_argument("--label-encoding", choices=ENCODINGS, default="index",
                        help="index: single-channel class ids; rgb: ImageNet-S R + 256*G")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="MMSegmentation's reduce_zero_label (ADE20K): 0 -> ignore, k -> k-1, "
                             "for ground truth and PNG predictions")
    parser.add_argument("--gt-suffix", default=".png",
                        help="ground-truth file suffix stripped for matching (default .png)")
    parser.add_argument("--pred-suffix", default=".png",
                        help="prediction file / img_path suffix stripped for matching")
    parser.add_argument("--class-names", metavar="SOURCE",
                        help="per-class row names: a text file (one per line), an MMSegmentation config "
                             "(its test set's classes) or a dataset class name such as ADE20KDataset")
    parser.add_argument("--per-class", action="store_true", help="add per-class IoU")
    add_output_arguments(parser)
    return parser


def _compare_from_args(args) -> Comparison:
    return compare_miou(args.gt, args.preds, args.num_classes,
                        args.ignore_index, args.label_encoding, args.per_class,
                        args.reduce_zero_label, args.gt_suffix, args.pred_suffix,
                        args.class_names)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(argv, build_parser(), _compare_from_args)

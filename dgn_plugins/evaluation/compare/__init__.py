"""Side-by-side comparisons of evaluation results (GN baseline vs DGN runs).

``coco`` scores detection/instance-segmentation results with pycocotools'
``COCOeval``; ``miou`` scores semantic segmentation maps with the
intersect/union histograms of MMSegmentation's ``IoUMetric`` and the ImageNet-S
evaluator; ``report`` renders either as Markdown, CSV, JSON or a bar chart.

Submodules are not imported here so that ``import dgn_plugins.evaluation.compare`` stays
cheap and does not require pycocotools or matplotlib. This module holds the two
things every tool shares: the error type and the result-file reader.
"""
import pickle
import zipfile
from pathlib import Path


class ComparisonError(Exception):
    """An input the comparison tools cannot score; the message names the file.

    The command-line tools print it and exit with status 2, so users see what
    to fix instead of a traceback from deep inside pycocotools or numpy.
    """


def read_results_file(path, formats=("json", "pickle", "torch")):
    """Parse JSON, a plain pickle or a ``torch.save`` archive, chosen by content.

    Toolkit dumps (mmengine's ``DumpResults``, Detectron2's ``torch.save``) hold
    only dicts, lists, tensors and arrays; they are loaded by an allow-list of
    exactly those (:mod:`dgn_plugins.data.safe_load`), so a shared file cannot run
    code. ``formats`` restricts what is accepted (ground truth: JSON only).
    """
    from ...data.safe_load import UnsafeFileError, load_data_file

    path = Path(path)
    if not path.is_file():
        raise ComparisonError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip()
    kind = "torch" if zipfile.is_zipfile(path) else "pickle" if head.startswith(b"\x80") else "json"
    if kind not in formats:
        raise ComparisonError(f"{path}: expected {' or '.join(formats)}, got a {kind} file")
    try:
        return load_data_file(path)
    except UnsafeFileError as err:
        raise ComparisonError(f"{path}: refused: {err}") from None
    except (ValueError, pickle.UnpicklingError, EOFError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300]
        if "unrecognised format" in reason:
            raise ComparisonError(f"{path}: unrecognised format (expected JSON, a pickle "
                                  "or a torch.save file)") from None
        raise ComparisonError(f"{path}: cannot be parsed ({reason})") from None


__all__ = ["ComparisonError", "read_results_file"]

"""Side-by-side comparisons of evaluation results (GN baseline vs DGN runs).

``coco`` scores detection/instance-segmentation results with pycocotools'
``COCOeval``; ``miou`` scores semantic segmentation maps with the
intersect/union histograms of MMSegmentation's ``IoUMetric`` and the ImageNet-S
evaluator; ``report`` renders either as Markdown, CSV, JSON or a bar chart.

Submodules are not imported here so that ``import dgn_plugins.compare`` stays
cheap and does not require pycocotools or matplotlib. This module holds the two
things every tool shares: the error type and the result-file reader.
"""
import json
import pickle
import zipfile
from pathlib import Path


class ComparisonError(Exception):
    """An input the comparison tools cannot score; the message names the file.

    The command-line tools print it and exit with status 2, so users see what
    to fix instead of a traceback from deep inside pycocotools or numpy.
    """


def read_results_file(path):
    """Parse JSON, a plain pickle or a ``torch.save`` archive, chosen by content.

    Toolkit dumps (mmengine's ``DumpResults``, Detectron2's ``torch.save``) hold
    only dicts, lists, tensors and arrays, so neither MMEngine nor Detectron2 is
    needed to read them; torch is imported only for tensors and zip archives.
    """
    path = Path(path)
    if not path.is_file():
        raise ComparisonError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip()
    try:
        if zipfile.is_zipfile(path):
            import torch

            return torch.load(path, map_location="cpu", weights_only=False)
        if head.startswith(b"\x80"):
            with open(path, "rb") as handle:
                return pickle.load(handle)
        if head[:1] in (b"[", b"{"):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ComparisonError(f"{path}: the pickle refers to code that is not installed ({err}); "
                              "only dicts, lists, tensors and arrays can be read") from err
    except (ValueError, pickle.UnpicklingError, EOFError, RuntimeError) as err:
        raise ComparisonError(f"{path}: cannot be parsed ({err})") from err
    raise ComparisonError(f"{path}: unrecognised format (expected JSON, a pickle "
                          "or a torch.save file)")


__all__ = ["ComparisonError", "read_results_file"]

"""Train or evaluate a Detectron2 config with DGN: ``tools/train_net.py``'s flags.

    python -m dgn_plugins.detectron2.launcher --config-file configs/detectron2/demo_mask_rcnn_dgn.yaml
    python -m dgn_plugins.detectron2.launcher --config-file CFG.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    python -m dgn_plugins.detectron2.launcher --config-file CFG.yaml --resume          # continue OUTPUT_DIR
    python -m dgn_plugins.detectron2.launcher --config-file CFG.yaml --eval-only MODEL.WEIGHTS model.pth
    python -m dgn_plugins.detectron2.launcher --config-file configs/detectron2/mask_rcnn_R_50_FPN_dgn_lazy.py train.max_iter=10

``.yaml`` configs (yacs, with ``MODEL.DGN`` added) train with
:class:`DGNTrainer`; LazyConfig ``.py`` files with :func:`.lazy.train`
(``tools/lazyconfig_train_net.py`` plus ``train.dgn_regroup``). The config
path may also come first without ``--config-file`` (how ``tools/train.py``
passes it on), and ``--work-dir`` sets the output folder.

Without CUDA a ``cuda`` device falls back to CPU, and ``--num-gpus N``
starts N processes that train with DDP over gloo.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from argparse import ArgumentTypeError
from typing import List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg
from detectron2.engine import default_argument_parser, default_setup, defaults, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm

from ..cli import ToolParser, existing_file, integer, output_dir
from ..errors import ConfigError
from . import lazy
from .checkpoint import check_norm_keys_on_load
from .config import add_dgn_config
from .data import register_datasets_of
from .lazy import ddp_device_kwargs
from .trainer import DGNTrainer, setup_dgn_logger

__all__ = ["main", "parse_args", "setup_yacs", "setup_lazy", "is_lazy_config", "cuda_or_cpu", "lazy_dataset_names",
           "cpu_ddp"]

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".py")


# ----------------------------------------------------------------- arguments
def parse_args(argv: Optional[List[str]] = None):
    """``train_net.py``'s flags (Detectron2's ``default_argument_parser``) and ``--work-dir``, checked
    while parsing as every tool's are (:mod:`dgn_plugins.cli`: one line, exit status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        argv = ["--config-file"] + argv  # ``launcher CONFIG [flags]``, as tools/train.py is called
    parser = ToolParser(parents=[default_argument_parser()], add_help=False, prog="train.py",
                        description="Train or evaluate a Detectron2 config with Dynamic Group Normalization")
    checked = {"config_file": _config_file, "num_gpus": integer(1), "num_machines": integer(1),
               "machine_rank": integer(0)}
    for action in parser._actions:  # Detectron2's own flags, typed here
        if action.dest in checked:
            action.type = checked[action.dest]
            if action.dest == "config_file":
                action.default = None
    parser.add_argument("--work-dir", type=output_dir, help="output folder (sets OUTPUT_DIR / train.output_dir)")
    parser.add_argument("--allow-norm-key-mismatch", action="store_true",
                        help="load MODEL.WEIGHTS / train.init_checkpoint even where its normalisation keys do not "
                             "match the model's (a WARNING names them); by default the run stops")
    parser.add_check(lambda args: None if args.config_file else "a config file is required: --config-file CONFIG")
    return parser.parse_args(argv)


def _config_file(text: str) -> str:
    if not str(existing_file(text)).endswith(CONFIG_SUFFIXES):
        raise ArgumentTypeError(f"{text}: not a Detectron2 config (expected {', '.join(CONFIG_SUFFIXES)})")
    return text


@contextlib.contextmanager
def _config_errors(args, what: str):
    """Detectron2's complaints about a config or its overrides (a key that does not exist, a value
    of the wrong type, an odd-length override list) as one :class:`ConfigError` line."""
    try:
        yield
    except (AssertionError, KeyError, ValueError, TypeError, AttributeError, SyntaxError) as error:
        where = f"{args.config_file}" if what == "config" else f"overrides {' '.join(args.opts)}"
        raise ConfigError(f"{where}: {' '.join(str(error).split())}") from None


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


def cuda_or_cpu(device: str, where: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"{where}={device!r} but CUDA is not available: using the CPU.")
        return "cpu"
    return device


@contextlib.contextmanager
def cpu_ddp():
    """Let ``DefaultTrainer`` wrap a CPU model in DDP (several processes on CPU, gloo).

    ``DefaultTrainer.__init__`` calls ``create_ddp_model(model, broadcast_buffers=False)``,
    which passes ``device_ids=[local_rank]``: PyTorch refuses that for a CPU module.
    Within this context ``create_ddp_model`` passes ``device_ids=None`` for CPU models
    (as :func:`~.lazy.train` does); GPU models are untouched.
    """
    original = defaults.create_ddp_model

    def create(model, *, fp16_compression=False, **kwargs):
        return original(model, fp16_compression=fp16_compression, **{**ddp_device_kwargs(model), **kwargs})

    defaults.create_ddp_model = create
    try:
        yield
    finally:
        defaults.create_ddp_model = original


# --------------------------------------------------------------------- yacs
def setup_yacs(args):
    """The frozen yacs config of ``args``, with Detectron2's and our logging set up."""
    cfg = get_cfg()
    add_dgn_config(cfg)
    with _config_errors(args, "config"):
        cfg.merge_from_file(args.config_file)
    with _config_errors(args, "overrides"):
        cfg.merge_from_list(args.opts)
    if args.work_dir:
        cfg.OUTPUT_DIR = str(args.work_dir)
    cfg.MODEL.DEVICE = cuda_or_cpu(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    cfg.freeze()
    default_setup(cfg, args)
    setup_dgn_logger(cfg.OUTPUT_DIR)
    register_datasets_of(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def _checked(checkpointer, where: str, args):
    """``checkpointer``, stopping at a checkpoint that leaves norm weights behind (:mod:`.checkpoint`)."""
    return check_norm_keys_on_load(checkpointer, where, allow_mismatch=args.allow_norm_key_mismatch)


def run_yacs(args):
    cfg = setup_yacs(args)
    if args.eval_only:
        model = DGNTrainer.build_model(cfg)
        checkpointer = _checked(DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR), "MODEL.WEIGHTS", args)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return DGNTrainer.test(cfg, model)
    with cpu_ddp():
        trainer = DGNTrainer(cfg)
    _checked(trainer.checkpointer, "MODEL.WEIGHTS", args)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()  # only with TEST.EXPECTED_RESULTS; else the EvalHook's last results:
    return results if results is not None else getattr(trainer, "_last_eval_results", None)


# --------------------------------------------------------------- LazyConfig
def setup_lazy(args):
    with _config_errors(args, "config"):
        cfg = LazyConfig.load(args.config_file)
    with _config_errors(args, "overrides"):
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.work_dir:
        cfg.train.output_dir = str(args.work_dir)
    cfg.train.device = cuda_or_cpu(cfg.train.device, "train.device")
    if cfg.train.device == "cpu" and cfg.train.amp.enabled:
        logger.warning("train.amp.enabled on CPU: AMPTrainer needs CUDA, training in float32.")
        cfg.train.amp.enabled = False
    default_setup(cfg, args)
    setup_dgn_logger(cfg.train.output_dir)
    register_datasets_of(lazy_dataset_names(cfg))
    return cfg


def lazy_dataset_names(cfg) -> List[str]:
    """``dataloader.{train,test}.dataset.names`` (a name or a list of them), where present."""
    names: List[str] = []
    for split in ("train", "test"):
        loader = cfg.get("dataloader", {}).get(split)
        dataset = loader.get("dataset") if loader is not None else None
        value = dataset.get("names") if dataset is not None and hasattr(dataset, "get") else None
        if isinstance(value, str):
            names.append(value)
        elif value is not None:
            names.extend(str(name) for name in value)
    return names


def run_lazy(args):
    cfg = setup_lazy(args)
    if args.eval_only:
        model = lazy.build_model(cfg)
        model = create_ddp_model(model, **ddp_device_kwargs(model))
        _checked(DetectionCheckpointer(model), "train.init_checkpoint", args).load(cfg.train.init_checkpoint)
        return lazy.test(cfg, model)
    return lazy.train(cfg, resume=args.resume, allow_norm_key_mismatch=args.allow_norm_key_mismatch)


# ---------------------------------------------------------------- entry
def _worker(args):
    """One process's work (every rank runs it after ``launch`` set up the process group)."""
    results = run_lazy(args) if is_lazy_config(args.config_file) else run_yacs(args)
    comm.synchronize()
    return results


def main(argv: Optional[List[str]] = None):
    """Run ``argv`` (``sys.argv[1:]`` when None); returns the evaluation results of a single process."""
    args = parse_args(argv)
    if args.num_gpus * args.num_machines == 1:
        return _worker(args)
    launch(
        _worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return None


def cli(argv: Optional[List[str]] = None) -> int:
    """``main`` for the command line: a config error is one line on stderr and exit status 2."""
    from ..errors import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())

"""Train a detector, segmentor or classifier with DGN: the launcher for MMDetection,
MMSegmentation and MMPretrain configs (``tools/train.py`` hands Detectron2 configs to
``dgn_plugins.detectron2.launcher`` instead, see :mod:`dgn_plugins.launch`).

The flags are those of the toolkits' own ``tools/train.py``::

    python tools/train.py configs/mmdet/mask-rcnn_r50_fpn_dgn-all_2x_coco.py
    torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch
    python tools/train.py CONFIG --resume            # latest checkpoint in work_dir
    python tools/train.py CONFIG --resume ckpt.pth   # that checkpoint
    python tools/train.py mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py --dgn   # a GN config as DGN

It picks the toolkit from the config (``default_scope``, else the model
type), registers that toolkit's modules, imports ``dgn_plugins.openmmlab`` (so configs
need no ``custom_imports``) and allow-lists MMEngine's checkpoint types, checks every ``norm_cfg`` type names a registered
layer, and builds MMEngine's ``Runner`` as mmdet's launcher does. Without
CUDA, distributed runs use gloo on CPU. ``--dgn`` runs a GN config with DGN
(:mod:`dgn_plugins.openmmlab.switch`). Every flag is checked while parsing
(:mod:`dgn_plugins.cli`), and errors a user fixes in the config (unknown norm
type, DGN options a layer cannot meet, an override of the wrong type, ``--dgn``
with no GN to convert) are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys

from ..cli import KeyValues, ToolParser, checkpoint_file, existing_file, integer, key_value, output_dir
from ..errors import ConfigError
from ..training.schedule import interval_argument, steps_argument

OPENMMLAB_TOOLKITS = ("mmdet", "mmseg", "mmpretrain")
CONFIG_SUFFIXES = (".py", ".json", ".yaml", ".yml")  # what mmengine's Config.fromfile reads


def parse_args(argv=None) -> argparse.Namespace:
    """The toolkits' ``tools/train.py`` flags and ``--dgn``'s, each checked before anything is built
    (:mod:`dgn_plugins.cli`: one line and exit status 2 for a bad value)."""
    from mmengine.config import DictAction

    config_value = key_value(DictAction._parse_iterable)  # mmengine's reading of VALUE, its errors one line
    parser = ToolParser(prog="train.py", description="Train a model with DGN (MMDetection / MMSegmentation / MMPretrain configs)")
    parser.add_argument("config", type=config_argument, help="train config file path (or package::path)")
    parser.add_argument("--work-dir", type=output_dir, help="the dir to save logs and models")
    parser.add_argument("--amp", action="store_true", default=False, help="enable automatic-mixed-precision training")
    parser.add_argument("--auto-scale-lr", action="store_true", help="enable automatically scaling LR")
    parser.add_argument(
        "--resume",
        nargs="?",
        type=resume_argument,
        const="auto",
        help="resume from this checkpoint; without a path, from the latest checkpoint in the work dir",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        type=config_value,
        action=KeyValues,
        metavar="KEY=VALUE",
        help="override config settings, xxx=yyy pairs merged into the config (as in the toolkits' train.py)",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher")
    parser.add_argument("--allow-norm-key-mismatch", action="store_true",
                        help="load a checkpoint (load_from, a Pretrained init_cfg) whose normalisation keys do not "
                             "match the model's, with a warning naming them; by default the run stops")
    dgn = parser.add_argument_group("GN -> DGN", "run a GN config with Dynamic Group Normalization, no config file needed")
    dgn.add_argument("--dgn", action="store_true",
                     help="replace every GN norm_cfg (and nn.GroupNorm built directly) with DGN and add DGNRegroupHook")
    dgn.add_argument("--dgn-interval", type=interval_argument, default=0.1,
                     help="regroup every N iterations, or every share of the run as a float in (0, 1) "
                          "(default 0.1: every tenth of training)")
    dgn.add_argument("--dgn-stop", type=steps_argument,
                     help="last iteration that may regroup, or a share of the run (default: the hook's, 0.9: none "
                          "in the last tenth); both defaults are the study's choice (bench/RESULTS.md)")
    dgn.add_argument("--dgn-options", nargs="+", type=config_value, action=DGNOptions, metavar="KEY=VALUE",
                     help="DGN layer options, e.g. alpha=0.5 percentile=0.75 group_size=16 (GN's num_groups is kept)")
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument("--local_rank", "--local-rank", type=integer(0), default=0)
    parser.add_check(lambda args: None if args.dgn or not (args.dgn_options or args.dgn_stop is not None)
                     else "--dgn-options/--dgn-stop need --dgn")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


class DGNOptions(KeyValues):
    """``--dgn-options``: the layer options, known keys and values the layer accepts (``check_layer_options``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .switch import check_layer_options

        super().__call__(parser, namespace, values, option_string)
        try:
            check_layer_options(getattr(namespace, self.dest))
        except ConfigError as error:
            parser.error(str(error))


def config_argument(text: str) -> str:
    """A config file mmengine reads, or ``package::path`` in an installed toolkit; returned as given."""
    if "::" not in text:
        resolved = str(existing_file(text))
    else:
        try:
            resolved = resolve_config_path(text)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    if not resolved.endswith(CONFIG_SUFFIXES):
        raise argparse.ArgumentTypeError(f"{text}: not a config (mmengine reads {', '.join(CONFIG_SUFFIXES)} files)")
    return text


def resume_argument(text: str):
    """``--resume PATH``: a checkpoint file (checked), or a URL mmengine downloads (as given);
    ``auto`` (``--resume`` alone: argparse passes its const through here too) as it is."""
    return text if text == "auto" or "://" in text else checkpoint_file(text)


resume_argument.role = "input"


# ------------------------------------------------------------------ toolkit
def toolkit_of(cfg) -> str:
    """``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``: the config's default scope, else whose registry knows
    the model type (the first, in that order, whose registry has it)."""
    scope = cfg.get("default_scope")
    if scope in OPENMMLAB_TOOLKITS:
        return scope
    model_type = cfg.get("model", {}).get("type") if isinstance(cfg.get("model"), dict) else None
    if isinstance(model_type, str):
        from mmengine.registry import MODELS

        for toolkit in OPENMMLAB_TOOLKITS:
            try:
                with MODELS.switch_scope_and_registry(toolkit) as registry:
                    registry.import_from_location()  # the toolkit's models register lazily
                    if registry.scope == toolkit and model_type in registry.module_dict:
                        return toolkit
            except ImportError:
                continue
    raise ConfigError(
        f"Cannot tell whether the config is for MMDetection, MMSegmentation or MMPretrain (default_scope={scope!r}, "
        f"model type={model_type!r}): set default_scope = 'mmdet', 'mmseg' or 'mmpretrain' in it."
    )


def register_toolkit(toolkit: str) -> None:
    """Register every module of the toolkit, and DGN's, before building."""
    if toolkit == "mmdet":
        from mmdet.utils import register_all_modules, setup_cache_size_limit_of_dynamo

        setup_cache_size_limit_of_dynamo()
    elif toolkit == "mmseg":
        from mmseg.utils import register_all_modules
    else:
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)  # the Runner sets it from cfg.default_scope
    import dgn_plugins.openmmlab  # DGN, DGNRegroupHook

    dgn_plugins.openmmlab.allow_checkpoint_types()  # MMEngine's checkpoints under torch.load(weights_only=True)


# -------------------------------------------------------------------- config
def load_config(args):
    """The config with the command line applied, as mmdet's ``tools/train.py`` does."""
    from mmengine.config import Config

    cfg = Config.fromfile(resolve_config_path(args.config))
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        _check_overrides(cfg, args.cfg_options)
        try:
            cfg.merge_from_dict(args.cfg_options)
        except (TypeError, KeyError, ValueError) as error:  # e.g. a key path through a number
            raise ConfigError(f"--cfg-options {' '.join(f'{k}={v}' for k, v in args.cfg_options.items())}: "
                              f"{error}") from None
    # work_dir: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = str(args.work_dir)
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config.split("::")[-1]))[0])
    if getattr(args, "dgn", False):  # applied by build_runner, which knows the toolkit and the data
        cfg.dgn_switch = dict(options=dict(args.dgn_options or {}), interval=args.dgn_interval, stop=args.dgn_stop)
    if args.amp:
        _enable_amp(cfg)
    if args.auto_scale_lr:
        scale = cfg.get("auto_scale_lr")
        if isinstance(scale, dict) and "enable" in scale and "base_batch_size" in scale:
            cfg.auto_scale_lr.enable = True
        else:
            raise ConfigError(
                '--auto-scale-lr needs "auto_scale_lr = dict(enable=False, base_batch_size=...)" in the config'
            )
    # resume: an explicit checkpoint > the latest in work_dir
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = str(args.resume)
    return cfg


def _check_overrides(cfg, options) -> None:
    """Refuse an override that cannot be what the config holds there, a word where it has a number
    or True/False (``train_cfg.max_epochs=x``), naming the key, rather than by an ``int()`` deep in
    the Runner. (mmengine has already read numbers, true/false and None as such.)"""
    for key, value in options.items():
        current = cfg  # a Config: no dict itself, but read like one
        for part in key.split("."):
            if isinstance(current, (dict, type(cfg))) and part in current:
                current = current[part]
            elif isinstance(current, (list, tuple)) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            else:
                current = None  # a new key: nothing to compare with
                break
        if isinstance(current, (bool, int, float)) and isinstance(value, str):
            expected = "True or False" if isinstance(current, bool) else "a number"
            raise ConfigError(f"--cfg-options {key}={value}: expected {expected}, as the config has there "
                              f"({current!r})")


def resolve_config_path(path: str) -> str:
    """A local file, or ``package::relative/path.py`` (e.g. ``mmdet::gn/...``) in the installed toolkit."""
    if "::" not in path:
        try:
            return str(existing_file(path))
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"config file {error}") from None
    from mmengine.config import Config

    try:
        resolved, _ = Config._get_cfg_path(path, "")
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as error:
        raise ConfigError(f"config {path}: {error}") from None
    if not osp.isfile(resolved):
        raise ConfigError(f"config {path}: no file {resolved} in the installed package")
    return resolved


def _enable_amp(cfg) -> None:
    from mmengine.logging import print_log

    wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
    if wrapper == "AmpOptimWrapper":
        print_log("AMP training is already enabled in your config.", logger="current", level=logging.WARNING)
        return
    if wrapper != "OptimWrapper":
        raise ConfigError(f"--amp needs optim_wrapper.type == 'OptimWrapper', got {wrapper!r}")
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.loss_scale = "dynamic"


def setup_cpu_distributed(cfg) -> None:
    """Distributed training without CUDA: gloo, and DDP without device ids.

    MMEngine's ``init_dist`` calls ``torch.cuda.set_device`` and its default
    wrapper passes ``device_ids=[LOCAL_RANK]``; both fail on CPU. So we open
    the gloo process group ourselves (the Runner then keeps it) and give DDP
    ``device_ids=None``, keeping MMEngine's ``broadcast_buffers=False``.
    """
    import torch
    import torch.distributed as dist

    if cfg.launcher == "none" or torch.cuda.is_available():
        return
    env_cfg = dict(cfg.get("env_cfg") or {})
    dist_cfg = dict(env_cfg.get("dist_cfg") or {}, backend="gloo")
    cfg.env_cfg = dict(env_cfg, dist_cfg=dist_cfg)
    if cfg.launcher != "pytorch":
        raise ConfigError(
            f"--launcher {cfg.launcher} needs GPUs with MMEngine; on CPU use torchrun with --launcher pytorch."
        )
    if not dist.is_initialized():
        options = {k: v for k, v in dist_cfg.items() if k != "backend"}
        if "timeout" in options:
            import datetime

            options["timeout"] = datetime.timedelta(seconds=options["timeout"])
        dist.init_process_group(backend="gloo", **options)
    wrapper = dict(cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel"))
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg, allow_norm_key_mismatch: bool = False):
    """Register the toolkit, validate the norm types, build the Runner, check the checkpoints' norm keys."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    toolkit = toolkit_of(cfg)
    register_toolkit(toolkit)
    if cfg.get("default_scope") is None:
        cfg.default_scope = toolkit

    from dgn_plugins.grouping import DGNOptionError
    from dgn_plugins.openmmlab.norm_check import check_norm_types, explain_infeasible_dgn
    from dgn_plugins.training.model import name_layers

    switch = cfg.pop("dgn_switch", None)
    runner_cls = RUNNERS.get(cfg.runner_type) if "runner_type" in cfg else Runner
    if switch is not None:
        runner_cls, changes = _apply_dgn_switch(cfg, switch, runner_cls)
    check_norm_types(dict(model=cfg.get("model")), scope=toolkit)  # paths read model.backbone.norm_cfg
    setup_cpu_distributed(cfg)
    try:
        runner = runner_cls.from_cfg(cfg)
    except DGNOptionError as error:
        raise DGNOptionError(explain_infeasible_dgn(cfg.model, toolkit, error)) from None
    if switch is not None:
        _require_dgn_layers(runner, cfg)
        _add_regroup_hook(runner, cfg, switch, changes)
    name_layers(runner.model)  # a layout error in the first forward names its layer, with or without the hook
    _check_checkpoint_norm_keys(runner, cfg, allow_norm_key_mismatch)
    return runner


def _check_checkpoint_norm_keys(runner, cfg, allow: bool) -> None:
    """Stop (one line) before training if a checkpoint the run loads would leave norm weights behind:
    ``load_from``, and unless resuming (which overwrites them) each ``Pretrained`` ``init_cfg``."""
    from .norm_keys import ADVICE, NormKeyMismatchError, norm_key_problems

    _, problems = norm_key_problems(runner.model, cfg.get("load_from"), init_cfgs=not cfg.get("resume"))
    if problems and not allow:
        raise NormKeyMismatchError(f"{problems[0]}. {ADVICE}")
    for problem in problems:
        runner.logger.warning(f"{problem}; loading it anyway (--allow-norm-key-mismatch): those norm layers keep "
                              "their initial weights")


def _require_dgn_layers(runner, cfg) -> None:
    """``--dgn`` on a config with no GN would train a model without DGN layers: stop before training."""
    from ..training.model import dgn_layers
    from .norm_check import iter_norm_cfgs

    if not dgn_layers(runner.model):
        types = sorted({str(norm_cfg.get("type")) for _, norm_cfg in iter_norm_cfgs(cfg.model)})
        raise ConfigError(
            "--dgn: nothing to convert: the config has no GN norm_cfg "
            + (f"(its norm types: {', '.join(types)}) " if types else "")
            + "and its model builds no nn.GroupNorm, so it would train with no DGN layer"
        )


def _apply_dgn_switch(cfg, switch, runner_cls):
    """``--dgn`` on the config: GN norm_cfgs become DGN; returns the converting Runner class and the changes."""
    from dgn_plugins.openmmlab.switch import check_layer_options, converting_runner_class, gn_norm_cfgs_to_dgn

    options = check_layer_options(switch["options"])
    changes = dict(norm_cfgs=gn_norm_cfgs_to_dgn(cfg.model, options), modules=[])
    return converting_runner_class(runner_cls, options, changes["modules"]), changes


def _add_regroup_hook(runner, cfg, switch, changes) -> None:
    """``--dgn``: add DGNRegroupHook (the study's schedule unless given) and log what was changed."""
    from dgn_plugins.openmmlab import DGNRegroupHook

    log = runner.logger
    log.info(f"--dgn: {len(changes['norm_cfgs'])} GN norm_cfg(s) now DGN: {', '.join(changes['norm_cfgs']) or 'none'}"
             + (f"; options {switch['options']}" if switch["options"] else ""))
    log.info(f"--dgn: {len(changes['modules'])} nn.GroupNorm built outside norm_cfg converted"
             + (f": {', '.join(changes['modules'])}" if changes["modules"] else ""))
    if any(isinstance(hook, DGNRegroupHook) for hook in runner.hooks):
        log.info("--dgn: the config already has a DGNRegroupHook; none added")
        return
    schedule = dict(interval=switch["interval"])
    if switch["stop"] is not None:
        schedule["stop"] = switch["stop"]
    hook = DGNRegroupHook(**schedule)
    runner.register_hook(hook)
    log.info(f"--dgn: added DGNRegroupHook(interval={hook.schedule.interval}, stop={hook.schedule.stop})")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    cfg = load_config(args)
    runner = build_runner(cfg, allow_norm_key_mismatch=args.allow_norm_key_mismatch)
    runner.train()
    return runner


def cli(argv=None) -> int:
    """``main`` for the command line: errors a user can fix are one line on stderr, exit status 2."""
    from dgn_plugins.errors import run_cli

    return run_cli(main, argv)

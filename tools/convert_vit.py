#!/usr/bin/env python
"""Turn a MAE, TEC or iBOT / SERE ViT checkpoint into the init of the ViT ImageNet-S configs.

MMSegmentation's own ``tools/model_converters/vit2mmseg.py`` does the renaming
(``blocks.<i>.norm1`` -> ``layers.<i>.ln1``, ...); this tool first picks the
encoder (``'teacher'`` of iBOT / DINO / SERE checkpoints unless
``--checkpoint-key`` says otherwise, MAE's ``'model'``, or the bare state dict
of TEC's releases), strips ``module.`` / ``backbone.`` prefixes, loads a
fine-tuned checkpoint's ``fc_norm`` as the final norm, fills a missing final
norm with LayerNorm's initial values, and names what it drops, so that every
norm layer of the model gets a key (see dgn_plugins/openmmlab/vit_checkpoint.py).

    python tools/convert_vit.py mae_finetuned_vit_base.pth pretrain/vit-base-p16_mmseg.pth
    python tools/convert_vit.py ibot_vitb16_checkpoint.pth pretrain/vit-base-p16_mmseg.pth --checkpoint-key teacher

The input is read as data only (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from dgn_plugins.cli import ToolParser, checkpoint_file, output_file, run_tool
from dgn_plugins.data.safe_load import UnsafeFileError, load_torch_file


def build_parser() -> ToolParser:
    parser = ToolParser(prog="convert_vit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=checkpoint_file, help="the MAE / TEC / iBOT / SERE checkpoint")
    parser.add_argument("dst", type=output_file, help="the MMSegmentation checkpoint to write (never the input)")
    parser.add_argument("--checkpoint-key", help="the entry holding the weights (default: 'teacher' if present, "
                                                 "else 'model', 'state_dict', else the file itself)")
    return parser


def convert(args) -> None:
    import torch

    from dgn_plugins.openmmlab.vit_checkpoint import convert_vit_checkpoint

    state, notes = convert_vit_checkpoint(load_torch_file(args.src), args.checkpoint_key)
    for note in notes:
        print(note)
    folder = os.path.dirname(os.path.abspath(args.dst))
    os.makedirs(folder, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=folder, prefix=".convert_vit.", suffix=".pth")
    os.close(handle)
    try:
        torch.save(state, staging)
        os.replace(staging, args.dst)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    print(f"wrote {args.dst} ({len(state)} keys, {layers} blocks)")


def main(argv=None) -> int:
    return run_tool(build_parser(), argv, convert, errors=(UnsafeFileError, OSError))


if __name__ == "__main__":
    sys.exit(main())

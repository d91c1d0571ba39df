"""Synthetic ViT checkpoints in timm / MAE format, and MMSegmentation's own converter for them.

A state dict with the key names and shapes of a real MAE (timm ``VisionTransformer``)
checkpoint and random values; ``mmseg_converter()`` is ``convert_vit`` of
mmseg's ``tools/model_converters/vit2mmseg.py`` as the installed package ships
it (``mmseg/.mim/tools``), so the tests load what a user's conversion gives.
"""
from collections import OrderedDict

import torch


def mmseg_converter():
    """``convert_vit`` of mmseg's ``tools/model_converters/vit2mmseg.py``, from the installed package."""
    from dgn_plugins.openmmlab.vit_checkpoint import mmseg_vit_converter

    return mmseg_vit_converter()


def mae_state_dict(dims=64, layers=2, hidden=128, patch=8, image=32, seed=0):
    """A timm / MAE-format ViT state dict: the names and shapes of a real checkpoint, random values."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    patches = (image // patch) ** 2
    state = OrderedDict(cls_token=rand(1, 1, dims), pos_embed=rand(1, patches + 1, dims))
    state["patch_embed.proj.weight"] = rand(dims, 3, patch, patch)
    state["patch_embed.proj.bias"] = rand(dims)
    for i in range(layers):
        block = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[block + norm + ".weight"] = 1 + rand(dims)
            state[block + norm + ".bias"] = rand(dims)
        state[block + "attn.qkv.weight"] = rand(3 * dims, dims)
        state[block + "attn.qkv.bias"] = rand(3 * dims)
        state[block + "attn.proj.weight"] = rand(dims, dims)
        state[block + "attn.proj.bias"] = rand(dims)
        state[block + "mlp.fc1.weight"] = rand(hidden, dims)
        state[block + "mlp.fc1.bias"] = rand(hidden)
        state[block + "mlp.fc2.weight"] = rand(dims, hidden)
        state[block + "mlp.fc2.bias"] = rand(dims)
    state["norm.weight"] = 1 + rand(dims)
    state["norm.bias"] = rand(dims)
    state["head.weight"] = rand(1000, dims)  # the classifier: the converter drops it
    state["head.bias"] = rand(1000)
    return state


def save_converted(path, **shape) -> str:
    """A synthetic MAE checkpoint run through mmseg's converter and saved at ``path``."""
    torch.save(mmseg_converter()(mae_state_dict(**shape)), str(path))
    return str(path)

"""Layer-wise learning-rate decay for MMSegmentation's ``VisionTransformer``.

The ImageNet-S fine-tuning recipe (LUSSeg/ImageNetSegModel, ported to
MMSegmentation 0.x as ``configs/imagenets/fcn_mae-base_finetuned_*``) trains a
ViT with layer-wise lr decay: ``constructor='LearningRateDecayOptimizerConstructor'``,
``paramwise_cfg=dict(num_layers=12, decay_rate=0.4, decay_type='layer_wise')``.
MMSegmentation 1.x keeps that constructor but only for backbones whose class
name holds ``ConvNeXt``, ``BEiT`` or ``MAE``; on ``VisionTransformer`` it
raises a bare ``NotImplementedError``. ``ViTLearningRateDecayOptimizerConstructor``
is the same rule for any backbone with MMSegmentation's ViT parameter names
(``backbone.{cls_token,pos_embed,patch_embed}``, ``backbone.layers.<i>``):
MMSegmentation's own ``get_layer_id_for_vit`` gives each parameter its layer,
and the groups (names, lr scales, weight decay) are exactly the ones
MMSegmentation's constructor makes for its ``MAE``/``BEiT`` backbones.

With ``num_layers`` = L blocks: the embeddings get id 0, block i id i + 1,
everything else (the final norm, the heads) id L + 1; a parameter of id k
trains at ``lr * decay_rate ** (L + 1 - k)``. 1-D parameters and biases (norm
weights among them) have no weight decay.
"""
from __future__ import annotations

from typing import Dict, List

from mmengine.logging import print_log
from mmseg.engine.optimizers.layer_decay_optimizer_constructor import (
    LearningRateDecayOptimizerConstructor,
    get_layer_id_for_vit,
)
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ["ViTLearningRateDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLearningRateDecayOptimizerConstructor(LearningRateDecayOptimizerConstructor):
    """MMSegmentation's ``LearningRateDecayOptimizerConstructor`` (``decay_type='layer_wise'``) for its ViT.

    ``paramwise_cfg``: ``decay_rate`` (required), ``num_layers`` (the
    backbone's block count; checked against ``len(backbone.layers)``, taken
    from it when left out), ``decay_type`` (only ``'layer_wise'``).
    """

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        blocks = self._blocks(module)
        num_layers = self.paramwise_cfg.get("num_layers", blocks)
        decay_type = self.paramwise_cfg.get("decay_type", "layer_wise")
        if decay_type != "layer_wise":
            raise ValueError(f"{type(self).__name__} supports decay_type='layer_wise' only, got {decay_type!r}")
        if "decay_rate" not in self.paramwise_cfg:
            raise ValueError(f"{type(self).__name__} needs paramwise_cfg.decay_rate")
        if num_layers != blocks:
            raise ValueError(f"paramwise_cfg.num_layers={num_layers} but the backbone "
                             f"({type(module.backbone).__name__}) has {blocks} blocks: the lr decay would "
                             f"skip layers; set num_layers={blocks}")
        decay_rate = self.paramwise_cfg["decay_rate"]
        top = num_layers + 2  # mmseg's convention: ids 0 .. num_layers + 1
        groups: Dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue  # frozen weights
            # mmseg's rule, kept as is (its ``name in ('pos_embed', 'cls_token')`` never
            # matches a segmentor's ``backbone.``-prefixed names, so those two decay)
            no_decay = len(param.shape) == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
            layer_id = get_layer_id_for_vit(name, top)
            group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
            if group_name not in groups:
                scale = decay_rate ** (top - layer_id - 1)
                groups[group_name] = dict(weight_decay=0.0 if no_decay else self.base_wd, params=[], param_names=[],
                                          lr_scale=scale, group_name=group_name, lr=scale * self.base_lr)
            groups[group_name]["params"].append(param)
            groups[group_name]["param_names"].append(name)
        print_log(f"layer-wise lr decay {decay_rate} over {num_layers} blocks: "
                  + ", ".join(f"{k} x{g['lr_scale']:.3g} ({len(g['params'])})" for k, g in groups.items()),
                  logger="current")
        params.extend(groups.values())

    @staticmethod
    def _blocks(module: nn.Module) -> int:
        backbone = getattr(module, "backbone", None)
        layers = getattr(backbone, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError("ViTLearningRateDecayOptimizerConstructor needs a segmentor whose backbone keeps its "
                            f"blocks in backbone.layers (mmseg's VisionTransformer, BEiT, MAE); got "
                            f"{type(backbone).__name__}")
        return len(layers)

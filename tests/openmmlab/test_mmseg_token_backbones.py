"""MMSegmentation's other LayerNorm backbones with ``norm_cfg=dict(type='TokenDGN')`` (issue 19).

Swin, MiT (SegFormer), BEiT and MAE, each at a tiny size: every norm layer
the backbone builds from its ``norm_cfg`` is a ``TokenDynamicGroupNorm`` (no
``nn.LayerNorm`` left), and a segmentor with it trains one iteration
(forward, backward, optimizer step) and regroups.
"""
import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from torch import nn  # noqa: E402

import dgn_plugins.openmmlab  # noqa: E402, F401
from dgn_plugins import TokenDynamicGroupNorm, regroup_model  # noqa: E402

NORM = dict(type="TokenDGN", num_groups=4, eps=1e-6, requires_grad=True)
IMAGE = 64
#: backbone config, channels of the output the head reads, norm layers the backbone builds
BACKBONES = {
    "Swin": (dict(type="SwinTransformer", pretrain_img_size=IMAGE, embed_dims=16, patch_size=4, window_size=4,
                  depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), strides=(4, 2, 2, 2), out_indices=(3,),
                  drop_path_rate=0.0, norm_cfg=NORM), 128,
             # patch embedding, 2 per block, 3 patch mergings, the output's
             1 + 2 * 4 + 3 + 1),
    "MiT": (dict(type="MixVisionTransformer", embed_dims=16, num_stages=4, num_layers=(1, 1, 1, 1),
                 num_heads=(1, 2, 2, 4), sr_ratios=(8, 4, 2, 1), drop_path_rate=0.0, norm_cfg=NORM), 64,
            # per stage: the patch embedding, 2 per block, the stage's; the reduction's where sr_ratio > 1
            4 * (1 + 2 + 1) + 3),
    "BEiT": (dict(type="BEiT", img_size=IMAGE, patch_size=16, embed_dims=32, num_layers=2, num_heads=2,
                  out_indices=(1,), final_norm=True, norm_cfg=NORM), 32, 2 * 2 + 1),
    "MAE": (dict(type="MAE", img_size=IMAGE, patch_size=16, embed_dims=32, num_layers=2, num_heads=2,
                 out_indices=(1,), final_norm=True, norm_cfg=NORM), 32, 2 * 2 + 1),
}


@pytest.fixture(autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


def segmentor(backbone, channels):
    return MODELS.build(dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, size=(IMAGE, IMAGE)),
        backbone=backbone,
        decode_head=dict(type="FCNHead", in_channels=channels, channels=channels, num_convs=0, concat_input=False,
                         in_index=-1, num_classes=3, norm_cfg=None)))


def batch(size=2):
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(size):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, IMAGE, IMAGE), generator=gen))
        sample.set_metainfo(dict(img_shape=(IMAGE, IMAGE), ori_shape=(IMAGE, IMAGE), pad_shape=(IMAGE, IMAGE)))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, IMAGE, IMAGE), generator=gen, dtype=torch.uint8) for _ in range(size)]
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_ln_backbone_with_token_dgn_trains_an_iteration_and_regroups(name):
    backbone, channels, expected_norms = BACKBONES[name]
    torch.manual_seed(0)
    model = segmentor(backbone, channels)
    model.init_weights()
    norms = [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    assert len(norms) == expected_norms, [n for n, _ in norms]
    assert all(type(m) is TokenDynamicGroupNorm for _, m in norms), [(n, type(m)) for n, m in norms]
    assert all(m.num_groups == 4 and m.eps == 1e-6 for _, m in norms)

    # Adam: a step of about lr for every parameter with a gradient, however small (deep LN grads are ~1e-7)
    optim_wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))
    before = {n: m.weight.detach().clone() for n, m in norms}
    model.train()
    losses = model.train_step(batch(), optim_wrapper)
    assert all(torch.isfinite(v) for k, v in losses.items() if k.startswith("loss"))
    for n, m in norms:
        assert int(m.num_stat_updates) == 1, n  # the running channel statistics saw the batch
        assert not torch.equal(m.weight, before[n]), n  # the optimizer step reached every norm layer
    reports = regroup_model(model)
    assert len(reports) == expected_norms

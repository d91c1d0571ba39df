"""AugMix (the transform) and its JSD consistency loss, toolkit-free (``dgn_plugins.augmix``)."""
import math
import os
import sys

import numpy as np
import pytest
import torch

from dgn_plugins.augmix import (
    AugMixJSDLoss,
    AugMixParams,
    augment_and_mix,
    augment_batch,
    augmix_views,
    jsd_consistency,
)
from dgn_plugins.augmix.ops import ALL_OPS, OPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


# ------------------------------------------------------------------ the transform
def test_the_papers_operation_lists():
    assert [op.__name__ for op in OPS] == ["autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x",
                                           "shear_y", "translate_x", "translate_y"]
    assert [op.__name__ for op in ALL_OPS[len(OPS):]] == ["color", "contrast", "brightness", "sharpness"]
    assert AugMixParams() == AugMixParams(severity=3, width=3, depth=-1, alpha=1.0, all_ops=False)


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 1), (24, 40, 3)])
@pytest.mark.parametrize("all_ops", [False, True])
def test_output_shape_dtype_and_range(shape, all_ops):
    image = _image(shape)
    out = augment_and_mix(image, np.random.default_rng(0), AugMixParams(all_ops=all_ops))
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.array_equal(out, image.astype(np.float32))  # something was mixed in


def test_every_operation_keeps_size_and_mode():
    from PIL import Image

    for mode, shape in (("L", (20, 28)), ("RGB", (20, 28, 3))):
        image = Image.fromarray(_image(shape))
        for op in ALL_OPS:
            for level in (1, 3, 10):
                out = op(image, level, np.random.default_rng(level))
                assert out.size == image.size and out.mode == mode, op.__name__


def test_deterministic_given_the_generator():
    image = _image((32, 32, 3))
    first = augment_batch([image, image], np.random.default_rng(7))
    again = augment_batch([image, image], np.random.default_rng(7))
    other = augment_batch([image, image], np.random.default_rng(8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])  # one generator: each image draws afresh


def test_the_mixture_follows_the_reference_codes_draws():
    """Replaying the reference code's draw order (Dirichlet, Beta, then per chain: depth, op, op's own draws)."""
    from PIL import Image

    image, params = _image((32, 32, 3), seed=3), AugMixParams()
    out = augment_and_mix(image, np.random.default_rng(11), params)
    rng = np.random.default_rng(11)
    weights = np.float32(rng.dirichlet([1.0] * 3))
    skip = np.float32(rng.beta(1.0, 1.0))
    mix = np.zeros(image.shape, dtype=np.float32)
    for weight in weights:
        chained = Image.fromarray(image)
        for _ in range(int(rng.integers(1, 4))):
            chained = OPS[int(rng.integers(len(OPS)))](chained, 3, rng)
        mix += weight * np.asarray(chained, dtype=np.float32)
    expected = (1 - skip) * image.astype(np.float32) + skip * mix
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_views_are_clean_then_augmix():
    image = _image((16, 16))
    views = augmix_views(image, np.random.default_rng(0))
    assert len(views) == 3 and all(v.dtype == np.float32 and v.shape == image.shape for v in views)
    assert np.array_equal(views[0], image.astype(np.float32))
    assert not np.array_equal(views[1], views[2])


@pytest.mark.parametrize("make, message", [
    (lambda: augment_and_mix(np.zeros((8, 8), np.float32), np.random.default_rng(0)), "uint8 numpy image"),
    (lambda: augment_and_mix(np.zeros((8, 8, 4), np.uint8), np.random.default_rng(0)), "shape (H, W) or (H, W, 1|3)"),
    (lambda: AugMixParams(severity=0), "severity must be an integer in 1-10"),
    (lambda: AugMixParams(width=0), "width must be an integer >= 1"),
    (lambda: AugMixParams(depth=0), "depth must be -1"),
    (lambda: AugMixParams(alpha=0.0), "alpha must be a number > 0"),
    (lambda: augmix_views(np.zeros((8, 8), np.uint8), np.random.default_rng(0), views=1), "views must be an integer >= 2"),
])
def test_bad_input_is_one_line_naming_it(make, message):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ the loss
def _jsd_reference(views):
    """The JS term in float64 numpy, written out: mean_i mean_b sum_c p log(p / m)."""
    probs = [np.exp(v - v.max(1, keepdims=True)) for v in views]
    probs = [p / p.sum(1, keepdims=True) for p in probs]
    mixture = np.clip(np.mean(probs, axis=0), 1e-7, 1.0)
    return float(np.mean([np.mean(np.sum(p * (np.log(p) - np.log(mixture)), axis=1)) for p in probs]))


def test_jsd_against_a_float64_reference():
    views = [torch.randn(6, 10, dtype=torch.float64) * 2 for _ in range(3)]
    got = jsd_consistency(*views)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_jsd_reference([v.numpy() for v in views]), rel=1e-12, abs=1e-14)
    assert float(jsd_consistency(views[0], views[0], views[0])) == pytest.approx(0.0, abs=1e-15)
    assert float(jsd_consistency(*views)) <= math.log(3) + 1e-12  # JS over three distributions is at most log 3


def test_loss_is_clean_cross_entropy_plus_twelve_jsd():
    logits = torch.randn(3 * 5, 7, dtype=torch.float64)
    target = torch.randint(7, (5,))
    clean, aug1, aug2 = logits.split(5)
    ce = float(torch.nn.functional.cross_entropy(clean, target))
    expected = ce + 12.0 * _jsd_reference([clean.numpy(), aug1.numpy(), aug2.numpy()])
    assert float(AugMixJSDLoss()(logits, target)) == pytest.approx(expected, rel=1e-12)
    onehot = torch.nn.functional.one_hot(target, 7).double()
    assert float(AugMixJSDLoss()(logits, onehot)) == pytest.approx(expected, rel=1e-12)  # soft targets: same CE
    assert float(AugMixJSDLoss(jsd_weight=0.0, loss_weight=2.0)(logits, target)) == pytest.approx(2 * ce, rel=1e-12)


def test_gradients_by_gradcheck():
    views = [torch.randn(4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(jsd_consistency, views)
    logits = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(5, (4,))
    assert torch.autograd.gradcheck(lambda x: AugMixJSDLoss()(x, target), (logits,))


@pytest.mark.parametrize("make, message", [
    (lambda: AugMixJSDLoss()(torch.randn(10, 4), torch.zeros(4, dtype=torch.long)), "3 views x 4 samples = 12 rows"),
    (lambda: AugMixJSDLoss()(torch.randn(12), torch.zeros(4, dtype=torch.long)), "shape (views * batch, classes)"),
    (lambda: AugMixJSDLoss(views=1), "views must be an integer >= 2"),
    (lambda: AugMixJSDLoss(jsd_weight=-1), "jsd_weight must be a number >= 0"),
    (lambda: jsd_consistency(torch.randn(2, 3)), "2 or more views"),
])
def test_loss_bad_input_is_one_line_naming_it(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ the study's AugMix training
def test_study_augmix_training_is_seeded_and_views_match_the_clean_batch():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        from fashion_mnist import SmallResNet, _augmix_views, to_tensor, train
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    raw = _image((40, 32, 32))
    images, labels = to_tensor(raw), torch.arange(40) % 10
    index, flip = torch.arange(4), torch.tensor([True, False, True, False])
    first = _augmix_views(raw, index, flip, AugMixParams(), seed=1, step=3)
    again = _augmix_views(raw, index, flip, AugMixParams(), seed=1, step=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == 2
    assert first[0].shape == (4, 1, 32, 32) and not torch.equal(first[0], first[1])
    # the views are of the flipped images, as the clean batch is
    mirrored = raw.copy()
    mirrored[[0, 2]] = raw[[0, 2], :, ::-1]
    same = _augmix_views(mirrored, index, torch.zeros(4, dtype=torch.bool), AugMixParams(), seed=1, step=3)
    assert all(torch.equal(a, b) for a, b in zip(first, same))

    def weights(seed):
        torch.manual_seed(0)
        model = SmallResNet(width=8, group_size=4)
        train(model, images, labels, iters=2, batch=4, lr=0.1, seed=seed, augmix=AugMixParams(), raw_images=raw,
              probe=8)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(weights(1), weights(1)) and not torch.equal(weights(1), weights(2))
    with pytest.raises(ValueError, match="needs raw_images"):
        train(SmallResNet(8, 4), images, labels, iters=1, batch=4, lr=0.1, seed=0, augmix=AugMixParams())


def test_study_augmix_runs_only_the_final_stage_and_keeps_its_runs_apart(capsys):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import dgn_study
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    with pytest.raises(SystemExit) as info:
        dgn_study.parse_args(["screen", "--augmix"])
    assert info.value.code == 2 and "--augmix runs only the final and report stages" in capsys.readouterr().err
    plain, augmix = dgn_study.parse_args(["final"]), dgn_study.parse_args(["final", "--augmix"])
    assert "augmix" not in dgn_study.protocol(plain)  # the runs already on disk keep their protocol
    assert dgn_study.protocol(augmix)["augmix"]["severity"] == 3
    assert dgn_study.protocol(augmix) != dgn_study.protocol(plain)

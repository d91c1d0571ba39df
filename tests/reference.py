"""Float64 references that the fast code is checked against.

Written the obvious way (gather each group's channels, normalise them): slow,
but with nothing clever to get wrong.
"""
import torch


def group_norm_reference(x, group_id, num_groups, weight=None, bias=None, eps=1e-5):
    """Per-group normalisation in float64 by explicit gathering (differentiable)."""
    x64 = x.double()
    n = x64.shape[0]
    out = torch.zeros_like(x64, memory_format=torch.contiguous_format)
    for k in range(num_groups):
        channels = (group_id == k).nonzero().flatten()
        members = x64[:, channels]
        flat = members.flatten(1)
        mean = flat.mean(dim=1)
        var = flat.var(dim=1, unbiased=False)
        shape = (n,) + (1,) * (x64.dim() - 1)
        normed = (members - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
        out = out.index_copy(1, channels, normed)
    per_channel = (1, -1) + (1,) * (x64.dim() - 2)
    if weight is not None:
        out = out * weight.double().view(per_channel)
    if bias is not None:
        out = out + bias.double().view(per_channel)
    return out


def channel_stats_reference(x):
    """Per-(sample, channel) mean and biased variance in float64, [N, C] (a 2-D input: the values, variance 0)."""
    x64 = x.double()
    if x64.dim() == 2:
        return x64, torch.zeros_like(x64)
    flat = x64.flatten(2)
    return flat.mean(dim=2), flat.var(dim=2, unbiased=False)


def random_group_ids(num_channels, num_groups, size_min, size_max, generator=None):
    """A random grouping with every size in [size_min, size_max], channels shuffled."""
    sizes = torch.full((num_groups,), size_min, dtype=torch.long)
    spare = num_channels - num_groups * size_min
    assert 0 <= spare <= num_groups * (size_max - size_min)
    while spare:
        k = int(torch.randint(num_groups, (1,), generator=generator))
        if sizes[k] < size_max:
            sizes[k] += 1
            spare -= 1
    ids = torch.repeat_interleave(torch.arange(num_groups), sizes)
    return ids[torch.randperm(num_channels, generator=generator)]


def run_backend(backend, x, ids, groups, weight, bias, grad):
    """Outputs, statistics and input gradients of one backend (``dgn_plugins.use_backend``) on fresh leaves."""
    from dgn_plugins import use_backend
    from dgn_plugins.functional import dynamic_group_norm_with_stats

    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    with use_backend(backend):
        out, channel_mean, channel_var = dynamic_group_norm_with_stats(leaves[0], ids, groups, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad)
    return out, channel_mean, channel_var, grads


def reference_with_grads(x, ids, groups, weight, bias, grad):
    """The float64 reference's output and input gradients for the same leaves."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = group_norm_reference(leaves[0], ids, groups, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, [t for t in leaves if t is not None], grad.double())


def saved_tensor_shapes(fn):
    """(shape, dtype) of every tensor autograd saves while ``fn`` runs, sorted."""
    shapes = []

    def pack(t):
        shapes.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sorted(shapes, key=str)

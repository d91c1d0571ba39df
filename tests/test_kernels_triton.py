"""Triton kernels against the plain path and the float64 reference.

Without a GPU they run on the CPU through Triton's interpreter, which must be
enabled before triton is imported: in a process without ``TRITON_INTERPRET=1``
this module re-runs the file in a subprocess with it set, and also compiles
every kernel to H100 machine code, which needs no GPU. With CUDA available the
same tests run on the GPU directly.
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from dgn_plugins.kernels import triton_interpreter_supported  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = not INTERPRETED and torch.cuda.is_available()
#: Triton 3's compiler front end, which lowers to a named GPU target without one.
AHEAD_OF_TIME = importlib.util.find_spec("triton.backends") is not None
NO_INTERPRETER = (f"Triton {triton.__version__} has no interpreter for CPU tensors (TRITON_INTERPRET=1 needs Triton "
                  ">= 3.0); its kernels run only on a GPU, which this machine lacks")


if not INTERPRETED and not ON_GPU:

    @pytest.mark.skipif(not triton_interpreter_supported(), reason=NO_INTERPRETER)
    def test_interpreted_kernels_in_subprocess():
        env = dict(os.environ, TRITON_INTERPRET="1")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                   os.path.abspath(__file__)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        report = result.stdout[-6000:] + result.stderr[-3000:]
        assert result.returncode == 0, report
        assert " passed" in report and " failed" not in report, report

    @pytest.mark.skipif(not AHEAD_OF_TIME, reason=f"Triton {triton.__version__} cannot lower kernels to a GPU target "
                        "without a GPU driver (libcuda); the front-end test below runs instead")
    @pytest.mark.parametrize("element,channels_last", [("bf16", False), ("fp32", True)])
    def test_kernels_compile_for_an_h100_without_one(element, channels_last):
        """Lower every kernel to sm_90 machine code (ptxas ships with triton): the interpreter alone
        would not catch what the GPU compiler rejects."""
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from dgn_plugins.kernels import triton_dgn

        activation, unit = f"*{element}", "stride_c" if channels_last else "stride_s"
        pointers = {"x_ptr": activation, "y_ptr": activation, "dy_ptr": activation, "dx_ptr": activation,
                    "weight_ptr": activation, "bias_ptr": activation, "offsets_ptr": "*i64", "channels_ptr": "*i64",
                    "group_id_ptr": "*i64", "grad_weight_ptr": "*fp64", "grad_bias_ptr": "*fp64"}
        constexprs = {"ACC": tl.float32, "BLOCK_C": 128 if channels_last else 2,
                      "BLOCK_S": 16 if channels_last else 1024, "HAS_WEIGHT": True, "HAS_BIAS": True, "BLOCK_G": 16, "PIVOT_RATIO": 16.0}
        for name in ("_channel_moments", "_group_statistics", "_affine", "_channel_grad_sums",
                     "_group_grad_coefficients", "_grad_input"):
            kernel = getattr(triton_dgn, name)
            signature, constants = {}, {}
            for index, arg in enumerate(kernel.arg_names):
                if arg in constexprs or arg == unit or arg.endswith("_" + unit):  # unit strides are specialised
                    signature[arg] = "constexpr"
                    constants[(index,)] = constexprs.get(arg, 1)
                elif arg.endswith("_ptr"):
                    signature[arg] = pointers.get(arg, "*fp32")
                else:
                    signature[arg] = "fp32" if arg == "eps" else "i32"
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            assert compiled.asm["cubin"], name

    @pytest.mark.skipif(AHEAD_OF_TIME, reason="Triton 3 lowers the kernels all the way (the test above)")
    @pytest.mark.parametrize("element", ["bf16", "fp32"])
    def test_kernels_pass_the_front_end_of_an_old_triton(element):
        """Triton 2.1 (torch 2.1's) needs libcuda to compile; its front end (Python AST to Triton IR) does not,
        and is where a language feature it lacks would fail. Where it fails on a GPU, the fallback takes over."""
        import triton.language as tl
        from triton.compiler.compiler import ast_to_ttir, instance_descriptor

        from dgn_plugins.kernels import triton_dgn

        constexprs = {"ACC": tl.float32, "BLOCK_C": 2, "BLOCK_S": 1024, "HAS_WEIGHT": True, "HAS_BIAS": True,
                      "BLOCK_G": 16, "PIVOT_RATIO": 16.0}
        pointers = {"offsets_ptr": "*i64", "channels_ptr": "*i64", "group_id_ptr": "*i64", "grad_weight_ptr": "*fp64",
                    "grad_bias_ptr": "*fp64"}
        for name in ("_channel_moments", "_group_statistics", "_affine", "_channel_grad_sums",
                     "_group_grad_coefficients", "_grad_input"):
            kernel = getattr(triton_dgn, name)
            signature, constants = {}, {}
            for index, arg in enumerate(kernel.arg_names):
                if arg in constexprs or arg == "stride_s" or arg.endswith("_stride_s"):
                    constants[index] = constexprs.get(arg, 1)
                elif arg.endswith("_ptr"):
                    signature[index] = pointers.get(arg, f"*{element}")
                else:
                    signature[index] = "fp32" if arg == "eps" else "i32"
            ir = ast_to_ttir(kernel, signature, instance_descriptor(divisible_by_16=set(), equal_to_1=set()),
                             constants, debug=False, arch=90)
            assert "tt.func" in str(ir), name

    def test_forcing_triton_on_cpu_tensors_without_interpreter_raises():
        from dgn_plugins import set_backend

        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            set_backend("triton")

else:
    import torch.nn.functional as F
    from reference import group_norm_reference, random_group_ids, run_backend

    from dgn_plugins import use_backend
    from dgn_plugins.functional import dynamic_group_norm
    from dgn_plugins.grouping import default_group_ids
    from dgn_plugins.kernels import triton_dgn
    from dgn_plugins.layer import DynamicGroupNorm

    DEVICE = "cuda" if ON_GPU else "cpu"
    #: On the GPU the dispatcher picks the Triton kernels by itself; on the CPU they are forced.
    TRITON = "native" if ON_GPU else "triton"

    @pytest.fixture(autouse=True)
    def _triton_backend():
        with use_backend(TRITON):
            yield

    def _run(backend, monkeypatch, x, ids, groups, weight, bias, grad):
        """Output, channel statistics and gradients of one backend."""
        return run_backend(TRITON if backend == "triton" else "reference", x, ids, groups, weight, bias, grad)

    def _reference(x, ids, groups, weight, bias, grad):
        leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
        out = group_norm_reference(leaves[0], ids, groups, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad.double())
        return out, grads

    LAYOUTS = {  # name: (channels, groups, size_min, size_max)
        "ragged": (24, 4, 3, 9),
        "singletons": (12, 12, 1, 1),
        "one_group": (20, 1, 20, 20),
        "many_small": (40, 13, 2, 5),
    }

    @pytest.mark.parametrize("layout", sorted(LAYOUTS))
    @pytest.mark.parametrize("shape_of,memory_format", [
        (lambda c: (2, c, 5, 7), torch.contiguous_format),
        (lambda c: (2, c, 5, 7), torch.channels_last),
        (lambda c: (3, c, 11), None),
    ])
    def test_float32_matches_reference_and_plain_path(layout, shape_of, memory_format, monkeypatch):
        channels, groups, low, high = LAYOUTS[layout]
        gen = torch.Generator().manual_seed(channels * 100 + groups)
        ids = random_group_ids(channels, groups, low, high, gen).to(DEVICE)
        shape = shape_of(channels)
        x = (torch.randn(shape, generator=gen) * 2 - 1).to(DEVICE)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        weight, bias = torch.randn(channels, generator=gen).to(DEVICE), torch.randn(channels, generator=gen).to(DEVICE)
        grad = torch.randn(shape, generator=gen).to(DEVICE)

        out, mean, var, grads = _run("triton", monkeypatch, x, ids, groups, weight, bias, grad)
        if memory_format is torch.channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert grads[0].is_contiguous(memory_format=torch.channels_last)
        expected, expected_grads = _reference(x, ids, groups, weight, bias, grad)
        torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=0)
        for mine, ref in zip(grads, expected_grads):
            torch.testing.assert_close(mine.double(), ref, atol=2e-5, rtol=1e-5)

        plain_out, plain_mean, plain_var, plain_grads = _run("reference", monkeypatch, x, ids, groups, weight, bias, grad)
        torch.testing.assert_close(out, plain_out, atol=2e-6, rtol=0)
        torch.testing.assert_close(mean, plain_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(var, plain_var, atol=1e-6, rtol=1e-5)
        for mine, theirs in zip(grads, plain_grads):
            torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-5)

    @pytest.mark.parametrize("shape", [(2, 24, 3, 4), (3, 24), (1, 24, 2, 2, 3)])
    @pytest.mark.parametrize("affine", [True, False])
    def test_float64_is_exact(shape, affine, monkeypatch):
        gen = torch.Generator().manual_seed(3)
        ids = random_group_ids(24, 5, 2, 8, gen).to(DEVICE)
        x = torch.randn(shape, dtype=torch.float64, generator=gen).to(DEVICE)
        weight = torch.randn(24, dtype=torch.float64, generator=gen).to(DEVICE) if affine else None
        bias = torch.randn(24, dtype=torch.float64, generator=gen).to(DEVICE) if affine else None
        grad = torch.randn(shape, dtype=torch.float64, generator=gen).to(DEVICE)
        out, _, _, grads = _run("triton", monkeypatch, x, ids, 5, weight, bias, grad)
        expected, expected_grads = _reference(x, ids, 5, weight, bias, grad)
        torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-9)
        for mine, ref in zip(grads, expected_grads):
            torch.testing.assert_close(mine, ref, atol=1e-8, rtol=1e-7)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    @pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
    def test_half_precision_rounds_once_like_plain_path(dtype, memory_format, monkeypatch):
        gen = torch.Generator().manual_seed(4)
        ids = random_group_ids(32, 4, 4, 12, gen).to(DEVICE)
        x = (torch.randn(2, 32, 5, 5, generator=gen) * 2 + 3).to(DEVICE, dtype).contiguous(memory_format=memory_format)
        weight = torch.randn(32, generator=gen).to(DEVICE, dtype)
        bias = torch.randn(32, generator=gen).to(DEVICE, dtype)
        grad = torch.randn(2, 32, 5, 5, generator=gen).to(DEVICE, dtype)
        out, mean, _, grads = _run("triton", monkeypatch, x, ids, 4, weight, bias, grad)
        assert out.dtype == dtype and mean.dtype == torch.float32
        assert all(g.dtype == dtype for g in grads)
        # float32 arithmetic rounded once to the output dtype: the reference, rounded.
        expected, expected_grads = _reference(x, ids, 4, weight, bias, grad)
        torch.testing.assert_close(out, expected.to(dtype))
        plain_out, _, _, plain_grads = _run("reference", monkeypatch, x, ids, 4, weight, bias, grad)
        torch.testing.assert_close(out, plain_out)
        scale = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
        torch.testing.assert_close(grads[0].double(), expected_grads[0], atol=scale, rtol=scale)
        torch.testing.assert_close(grads[1].double(), expected_grads[1], atol=scale * 10, rtol=scale)

    def test_spatial_split_and_channel_blocks(monkeypatch):
        """Small tiles force several spatial splits and channel blocks per sample."""
        monkeypatch.setattr(triton_dgn, "_MAX_BLOCK_S", 8)
        monkeypatch.setattr(triton_dgn, "_MAX_BLOCK_C", 8)
        monkeypatch.setattr(triton_dgn, "_TILE", 32)
        monkeypatch.setattr(triton_dgn, "_INTERPRETER_PROGRAMS", 64)
        gen = torch.Generator().manual_seed(5)
        ids = random_group_ids(20, 3, 4, 9, gen).to(DEVICE)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 20, 9, 10, generator=gen).to(DEVICE).contiguous(memory_format=memory_format)
            if not ON_GPU:
                launch = triton_dgn._Launch(2, 20, 90, memory_format is torch.channels_last, x.device)
                assert launch.splits > 1 and launch.channel_blocks > 1
            weight, bias = torch.randn(20, generator=gen).to(DEVICE), torch.randn(20, generator=gen).to(DEVICE)
            grad = torch.randn(2, 20, 9, 10, generator=gen).to(DEVICE)
            out, _, _, grads = _run("triton", monkeypatch, x, ids, 3, weight, bias, grad)
            expected, expected_grads = _reference(x, ids, 3, weight, bias, grad)
            torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=0)
            for mine, ref in zip(grads, expected_grads):
                torch.testing.assert_close(mine.double(), ref, atol=2e-5, rtol=1e-5)

    def test_mixed_layouts_of_input_and_gradient(monkeypatch):
        ids = random_group_ids(16, 4, 2, 6).to(DEVICE)
        x = torch.randn(2, 16, 4, 6, device=DEVICE).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(2, 16, 4, 6, device=DEVICE)  # NCHW gradient for a channels_last input
        out, _, _, grads = _run("triton", monkeypatch, x, ids, 4, None, None, grad)
        expected, expected_grads = _reference(x, ids, 4, None, None, grad)
        torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(grads[0].double(), expected_grads[0], atol=2e-5, rtol=1e-5)

    def test_stable_at_mean_to_std_ratio_1000():
        x = torch.randn(2, 64, 9, 9, device=DEVICE) + 1000.0
        ids = default_group_ids(64, 32).to(DEVICE)
        reference = group_norm_reference(x, ids, 32)
        ours = (dynamic_group_norm(x, ids, 32).double() - reference).abs().max()
        native = (F.group_norm(x, 32).double() - reference).abs().max()
        assert ours <= native, (float(ours), float(native))

    def test_empty_batch_falls_back_cleanly():
        ids = random_group_ids(16, 4, 2, 6).to(DEVICE)
        x = torch.randn(0, 16, 5, 5, device=DEVICE, requires_grad=True)
        weight = torch.randn(16, device=DEVICE, requires_grad=True)
        bias = torch.randn(16, device=DEVICE, requires_grad=True)
        out = dynamic_group_norm(x, ids, 4, weight, bias)
        assert out.shape == x.shape
        out.sum().backward()
        assert x.grad.shape == x.shape and not weight.grad.any() and not bias.grad.any()

    def test_layer_uses_kernels_and_follows_regroups(monkeypatch):
        """Running statistics as the plain path's; a regroup invalidates the cached layout."""
        calls = []
        original = triton_dgn._forward
        monkeypatch.setattr(triton_dgn, "_forward", lambda *a: calls.append(1) or original(*a))
        fast, plain = DynamicGroupNorm(24, 4).to(DEVICE), DynamicGroupNorm(24, 4).to(DEVICE)
        x = torch.randn(2, 24, 5, 5, device=DEVICE) * 3 + 1
        for ids in (None, random_group_ids(24, 4, 3, 9)):
            if ids is not None:
                fast.set_group_ids(ids)
                plain.set_group_ids(ids)
            out = fast(x)
            with use_backend("reference"):
                expected = plain(x)
            torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
        assert len(calls) == 2
        torch.testing.assert_close(fast.channel_mean_ema, plain.channel_mean_ema)
        torch.testing.assert_close(fast.channel_var_ema, plain.channel_var_ema)

    @pytest.mark.parametrize("failing", ["_forward", "_backward"])
    def test_a_kernel_that_fails_to_compile_falls_back_once_and_training_goes_on(failing, monkeypatch):
        """A compile or launch failure switches that (device, dtype) to the plain formulation, with one warning
        naming the device, the dtype and the error; the run trains on with the same results."""
        import copy
        import warnings

        from dgn_plugins.kernels import fallback

        monkeypatch.setattr(fallback, "_failures", {})  # this test's failures only

        def broken(*args, **kwargs):
            raise RuntimeError("PTX .version 8.4 does not support .target sm_120 (simulated compile failure)")

        monkeypatch.setattr(triton_dgn, failing, broken)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), DynamicGroupNorm(24, 4),
                                    torch.nn.ReLU(), torch.nn.Conv2d(24, 2, 1)).to(DEVICE)
        twin = copy.deepcopy(model)
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]
        x = torch.randn(4, 3, 6, 6, device=DEVICE)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):  # three training steps: the warning comes once
                losses = []
                for net, optimizer, backend in ((model, optimizers[0], TRITON), (twin, optimizers[1], "reference")):
                    with use_backend(backend):
                        optimizer.zero_grad()
                        loss = net(x).square().mean()
                        loss.backward()
                        optimizer.step()
                    losses.append(loss.detach())
                torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
        ours = [w for w in caught if "Triton kernel" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        message = str(ours[0].message)
        kind = "forward" if failing == "_forward" else "backward"
        assert f"kernel {kind} failed on {DEVICE}" in message and "torch.float32" in message
        assert "simulated compile failure" in message
        assert set(fallback.failed_kernels()) == {(kind, torch.device(DEVICE).type, torch.float32)}
        for mine, theirs in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)

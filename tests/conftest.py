import os

import pytest


def available_backends():
    """Every DGN backend this process can run: the extension's kernels when built, the plain
    reference always, Triton's kernels on CPU tensors under its interpreter (TRITON_INTERPRET=1)."""
    from dgn_plugins import ops

    backends = ["native"] if ops.native_available() else []
    backends.append("reference")
    from dgn_plugins.kernels import triton_interpreter_supported

    if (os.environ.get("TRITON_INTERPRET") == "1" and ops.native_available() and ops.triton_available()
            and triton_interpreter_supported()):
        backends.append("triton")
    return backends


@pytest.fixture(params=available_backends())
def backend(request):
    """Run the test once per available backend (``dgn_plugins.use_backend``)."""
    from dgn_plugins import use_backend

    with use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)

"""Check a built dgn-plugins wheel: what it holds, and that it installs and runs outside the checkout.

Usage: check_wheel.py WHEEL VENV_DIR. ``make wheel-check`` builds the sdist, builds the wheel from it against the
environment's torch, and calls this with that environment's python. The throwaway environment at VENV_DIR sees the
calling environment's packages (torch, numpy, ...) through a ``.pth`` file, but gets dgn-plugins only from the wheel:
the check fails if ``dgn_plugins`` would still import from anywhere else.
"""
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

#: What the wheel must hold: (description, test on the list of member names).
REQUIRED = [
    ("the native CPU kernels dgn_plugins/_C*.so", lambda names: any(n.startswith("dgn_plugins/_C") and n.endswith(".so") for n in names)),
    ("the k-means inner loops dgn_plugins/_kmeans*.so", lambda names: any(n.startswith("dgn_plugins/_kmeans") and n.endswith(".so") for n in names)),
    ("the shipped MMDetection configs", lambda names: any(n.startswith("dgn_plugins/.mim/configs/mmdet/") for n in names)),
    ("the shipped MMSegmentation configs", lambda names: any(n.startswith("dgn_plugins/.mim/configs/mmseg/") for n in names)),
    ("the shipped Detectron2 configs", lambda names: any(n.startswith("dgn_plugins/.mim/configs/detectron2/") for n in names)),
    ("the tools (train.py)", lambda names: "dgn_plugins/.mim/tools/train.py" in names),
    ("the tools' shared code (dgn_plugins/cli.py, launch.py)", lambda names: {"dgn_plugins/cli.py", "dgn_plugins/launch.py"} <= set(names)),
    ("the license", lambda names: any(".dist-info/" in n and n.rsplit("/", 1)[-1].startswith("LICENSE") for n in names)),
]

#: Run inside the throwaway environment, from a folder outside the checkout.
SMOKE = r"""
import sys
import torch
import dgn_plugins
from dgn_plugins import DynamicGroupNorm, ops
from dgn_plugins._version import __version__
where = dgn_plugins.__file__
assert where.startswith(sys.argv[1]), f"dgn_plugins imported from {where}, not from the installed wheel"
assert ops.native_available(), f"native kernels not loaded from the wheel: {ops.native_import_error()}"
import dgn_plugins._kmeans  # noqa: F401
layer = DynamicGroupNorm(32, num_groups=4)
x = torch.randn(2, 32, 5, 5, requires_grad=True)
reference = torch.nn.functional.group_norm(x, 4, layer.weight, layer.bias, layer.eps)
layer(x).sum().backward()
assert torch.allclose(layer(x), reference, atol=1e-5), "DGN at GN's grouping differs from F.group_norm"
assert x.grad is not None and torch.isfinite(x.grad).all()
print(f"dgn-plugins {__version__} from the wheel: native kernels loaded, forward and backward match GN "
      f"(torch {torch.__version__}, {where})")
"""


def check_contents(wheel: Path) -> list:
    names = zipfile.ZipFile(wheel).namelist()
    return [what for what, holds in REQUIRED if not holds(names)]


def main(wheel: str, venv_dir: str) -> int:
    wheel, venv_dir = Path(wheel).resolve(), Path(venv_dir).resolve()
    missing = check_contents(wheel)
    if missing:
        print(f"check_wheel: {wheel.name} lacks " + "; ".join(missing), file=sys.stderr)
        return 1
    print(f"check_wheel: {wheel.name} holds the extensions, configs, tools and license")
    venv.EnvBuilder(clear=True, with_pip=False).create(venv_dir)
    python = venv_dir / "bin" / "python"
    target = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # The calling environment's packages (torch and the rest), after the throwaway's own site-packages.
    (target / "calling_environment.pth").write_text("".join(f"{path}\n" for path in sys.path if path.endswith("site-packages")))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    run = subprocess.run([str(python), "-c", SMOKE, str(target)], cwd=venv_dir, env={**os.environ, "PYTHONPATH": ""})
    return run.returncode


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: check_wheel.py WHEEL VENV_DIR")
    sys.exit(main(*sys.argv[1:]))

"""Installs that do what they say (issue 22): an editable install whose extension fails to compile falls back to
the PyTorch paths instead of failing, and a setuptools / pkg_resources problem is named as such.

Each test runs pip or setup.py in a subprocess against a copy of the package, in a throwaway environment that sees
this one's packages (torch, setuptools, ...) but not the checkout's installed dgn-plugins.
"""
import inspect
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import torch.utils.cpp_extension

ROOT = Path(__file__).resolve().parents[1]


def package_copy(tmp_path: Path) -> Path:
    """The files setup.py needs, without any compiled extension."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md", "LICENSE", "pyproject.toml", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "dgn_plugins", source / "dgn_plugins",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", ".mim"))
    return source


def throwaway_environment(tmp_path: Path) -> Path:
    """A venv whose site-packages ends with this environment's site-packages folders (a .pth file: their own .pth files are not run,
    the checkout's editable install stays out)."""
    location = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(location)
    python = location / "bin" / "python"
    purelib = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    Path(purelib, "outer.pth").write_text("".join(f"{path}\n" for path in sys.path if path.endswith("site-packages")))
    return python


def test_editable_install_with_a_failing_compiler_falls_back(tmp_path):
    source = package_copy(tmp_path)
    python = throwaway_environment(tmp_path)
    broken = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "MAX_JOBS": "1", "PYTHONPATH": ""}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--use-pep517", "-e", str(source), "-v"],
                             cwd=tmp_path, env=broken, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "installing without" in install.stdout + install.stderr
    check = subprocess.run(
        [str(python), "-W", "always", "-c",
         "import dgn_plugins, torch; from dgn_plugins import ops, DynamicGroupNorm; print(dgn_plugins.__file__); "
         "print(ops.native_available()); print(ops.native_import_error()); "
         "DynamicGroupNorm(8, num_groups=2)(torch.randn(2, 8, 3, requires_grad=True)).sum().backward()"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    where, native, reason = check.stdout.splitlines()[:3]
    assert where.startswith(str(source)), where
    assert native == "False"
    assert "is not built" in reason and "pip install --no-build-isolation" in reason
    assert "is not built" in check.stderr  # the one warning at import names the fix


def _setup_py_stderr(tmp_path: Path, sitecustomize: str) -> str:
    source = package_copy(tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(sitecustomize))
    run = subprocess.run([sys.executable, "setup.py", "--version"], cwd=source,
                         env={**os.environ, "PYTHONPATH": str(hooks)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


def test_a_cpp_extension_import_failure_is_named_as_setuptools_not_torch(tmp_path):
    stderr = _setup_py_stderr(tmp_path, """
        import sys
        class RefuseCppExtension:
            def find_spec(self, name, path=None, target=None):
                if name == "torch.utils.cpp_extension":
                    raise ImportError("cannot import name 'packaging' from 'pkg_resources'")
        sys.meta_path.insert(0, RefuseCppExtension())
    """)
    assert "setuptools / pkg_resources problem" in stderr and "setuptools<70" in stderr, stderr
    assert "torch is not importable" not in stderr


@pytest.mark.skipif("pkg_resources" not in inspect.getsource(torch.utils.cpp_extension),
                    reason="this torch's cpp_extension does not read pkg_resources (torch >= 2.3); the shim is for 2.1-2.2")
def test_setuptools_without_pkg_resources_packaging_still_builds(tmp_path):
    # setuptools >= 70 dropped pkg_resources.packaging, which torch 2.1-2.2's cpp_extension imports.
    stderr = _setup_py_stderr(tmp_path, """
        import pkg_resources
        del pkg_resources.packaging
    """)
    assert "does not import" not in stderr, stderr

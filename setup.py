"""dgn-plugins, with optional native CPU extensions (``dgn_plugins._C``, ``dgn_plugins._kmeans``).

The extensions (``dgn_plugins/csrc``) are built when torch is importable at
build time (``pip install --no-build-isolation``) and ``DGN_BUILD_EXT`` is not
``0``. Otherwise, or if compiling one fails, the package installs without it
and the code falls back to its Python / PyTorch paths.
"""
import os
import sys

from setuptools import find_packages, setup


def native_extension():
    """``(ext_modules, cmdclass)`` for dgn_plugins._C, or empty ones with a note why not."""
    if os.environ.get("DGN_BUILD_EXT", "1").strip() == "0":
        print("dgn-plugins: DGN_BUILD_EXT=0, installing without the native CPU extension", file=sys.stderr)
        return [], {}
    if os.name == "nt":
        print("dgn-plugins: the native CPU extension needs GCC or Clang; installing pure Python", file=sys.stderr)
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("dgn-plugins: torch is not importable at build time (use --no-build-isolation to build the native "
              "CPU extension); installing pure Python", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """A failed compilation leaves that extension out with a note, not a failed install."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # no compiler, unsupported platform, ...
                print(f"dgn-plugins: building {ext.name} failed ({error}); installing without it", file=sys.stderr)

    flags = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
    extension = CppExtension(
        "dgn_plugins._C",
        ["dgn_plugins/csrc/dgn_cpu.cpp"],
        depends=["dgn_plugins/csrc/dgn_rows.h", "dgn_plugins/csrc/dgn_passes.h"],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"],  # ATen's inline at::parallel_for is an OpenMP region
    )
    # The size-constrained k-means inner loops (dgn_plugins.regrouping.solver); plain C++ + pybind11.
    kmeans = CppExtension("dgn_plugins._kmeans", ["dgn_plugins/csrc/kmeans_cpu.cpp"], extra_compile_args=["-O3"])
    return [extension, kmeans], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = native_extension()

setup(
    name="dgn-plugins",
    version="0.1.0",
    description="Dynamic Group Normalization for MMDetection, MMSegmentation, MMPretrain and Detectron2",
    packages=find_packages(include=["dgn_plugins", "dgn_plugins.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.0", "numpy", "scipy"],
    extras_require={
        "mm": ["mmengine==0.10.7", "mmcv>=2.0.0,<2.2.0", "mmdet==3.3.0",
               "mmsegmentation==1.2.2", "mmpretrain==1.2.0", "ftfy", "regex", "pycocotools>=2.0.8"],
        "tools": ["pycocotools>=2.0.8", "matplotlib"],
        "test": ["pytest", "hypothesis"],
        "bench": ["k-means-constrained"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

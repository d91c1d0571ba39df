"""dgn-plugins, with optional native CPU extensions (``dgn_plugins._C``, ``dgn_plugins._kmeans``).

The extensions (``dgn_plugins/csrc``) are built when torch is importable at
build time (``pip install --no-build-isolation``) and ``DGN_BUILD_EXT`` is not
``0``. Otherwise, or if compiling one fails, the package installs without it
and the code falls back to its Python / PyTorch paths.
"""
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _restore_pkg_resources_packaging():
    """torch 2.1-2.2's cpp_extension reads ``pkg_resources.packaging``, which setuptools 70 dropped; put it back."""
    try:
        import pkg_resources
    except ImportError:  # setuptools >= 81 has no pkg_resources; torch versions that need it are older
        return
    if not hasattr(pkg_resources, "packaging"):
        import packaging.version

        pkg_resources.packaging = packaging


def native_extension():
    """``(ext_modules, cmdclass)`` for dgn_plugins._C, or empty ones with a note why not."""
    if os.environ.get("DGN_BUILD_EXT", "1").strip() == "0":
        print("dgn-plugins: DGN_BUILD_EXT=0, installing without the native CPU extension", file=sys.stderr)
        return [], {}
    if os.name == "nt":
        print("dgn-plugins: the native CPU extension needs GCC or Clang; installing pure Python", file=sys.stderr)
        return [], {}
    try:
        import torch  # noqa: F401
    except ImportError:
        print("dgn-plugins: torch is not importable at build time (use --no-build-isolation to build the native "
              "CPU extension); installing pure Python", file=sys.stderr)
        return [], {}
    try:
        _restore_pkg_resources_packaging()
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except (ImportError, AttributeError) as error:  # torch 2.1-2.2 with setuptools >= 70: pkg_resources.packaging
        print(f"dgn-plugins: torch.utils.cpp_extension does not import ({type(error).__name__}: {error}); this is "
              "a setuptools / pkg_resources problem, not torch: `pip install 'setuptools<70'` and install again "
              "with --no-build-isolation. Installing pure Python meanwhile", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """A failed compilation leaves that extension out with a note, not a failed install.

        The failed extension is also dropped from ``self.extensions``: an editable install copies every
        listed extension into the source tree afterwards, and a missing one would fail it ("can't copy").
        """

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # no compiler, unsupported platform, ...
                print(f"dgn-plugins: building {ext.name} failed ({error}); installing without it (the code falls "
                      "back to its PyTorch paths)", file=sys.stderr)
                self.failed_extensions = getattr(self, "failed_extensions", []) + [ext.name]

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as error:  # before any extension: torch's compiler check (no compiler, a broken one)
                print(f"dgn-plugins: building the native extensions failed ({error}); installing without them (the "
                      "code falls back to its PyTorch paths)", file=sys.stderr)
                self.failed_extensions = [ext.name for ext in self.extensions]
            failed = set(getattr(self, "failed_extensions", []))
            self.extensions = [ext for ext in self.extensions if ext.name not in failed]

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


def read_version() -> str:
    """The version from dgn_plugins/_version.py, read without importing the package (that imports torch)."""
    namespace = {}
    with open(os.path.join(HERE, "dgn_plugins", "_version.py"), encoding="utf-8") as file:
        exec(file.read(), namespace)
    return namespace["__version__"]


def add_mim_extension():
    """Copy configs/ and tools/ into dgn_plugins/.mim for a wheel, as OpenMMLab packages do (``mim`` finds them
    there), so an installed wheel carries the shipped configs and the tools. Checkouts use the folders as they are."""
    if "bdist_wheel" not in sys.argv:
        return
    target = os.path.join(HERE, "dgn_plugins", ".mim")
    for folder in ("configs", "tools"):
        source, destination = os.path.join(HERE, folder), os.path.join(target, folder)
        if not os.path.isdir(source):
            continue
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def read_readme() -> str:
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as file:
        return file.read()


add_mim_extension()
ext_modules, cmdclass = native_extension()

setup(
    name="dgn-plugins",
    version=read_version(),
    description="Dynamic Group Normalization (DGN) for MMDetection, MMSegmentation, MMPretrain and Detectron2",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    author="The dgn-plugins authors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    keywords="group normalization, dynamic group normalization, detection, segmentation, mmdetection, detectron2",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Framework :: PyTorch",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    packages=find_packages(include=["dgn_plugins", "dgn_plugins.*"]),
    package_data={"dgn_plugins": [".mim/configs/**/*", ".mim/tools/*.py"]},
    # What CI tests: Python 3.11 with torch 2.1.2 and 2.13.0 (README, "Tested stacks"). The code is
    # written for Python >= 3.9; no older Python than 3.11 runs in CI.
    python_requires=">=3.9",
    install_requires=["torch>=2.1,<2.15", "numpy", "scipy"],
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

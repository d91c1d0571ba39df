# One-command set-up for a fresh machine (Python 3.11, CPU only).
# `make demo` runs the main job, `make test` runs the test suite; both create
# the virtual environment on first use: one environment for both toolkits
# (OpenMMLab and Detectron2). pip's wheel cache makes re-runs fast (mmcv 2.1.0
# has no prebuilt wheel and is compiled once, ~17 min on 2 cores; Detectron2 is
# built from source each time the environment is made, ~2-4 min).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
MAX_JOBS ?= 2

# torch and the torchvision of the same release, both the registry's builds
# (CUDA builds; they run on the CPU). mmcv 2.1.0 compiles against torch 2.13,
# not 2.14. A CPU-only local build (torch==2.13.0+cpu, which pip prefers when
# one is offered) is excluded: the registry's torchvision does not load on it.
TORCH_VERSION ?= 2.13.0
TORCHVISION_VERSION ?= 0.28.0
TORCH_SPEC := torch==$(TORCH_VERSION),!=$(TORCH_VERSION)+cpu

# Detectron2 is on no registry: built from source, this commit. From a copy of
# its source when there is one (unmodified, as `git archive` makes it, top
# folder detectron2/), else from its repository. Extracted under build/, which
# git ignores; never part of the project.
DETECTRON2_COMMIT ?= 02b5c4e295e990042a714712c21dc79b731e8833
DETECTRON2_TARBALL ?= ../shared/third_party/detectron2-02b5c4e2.tar.gz
DETECTRON2_BUILD := build/detectron2-src
DETECTRON2_SOURCE := $(if $(wildcard $(DETECTRON2_TARBALL)),$(DETECTRON2_BUILD)/detectron2,git+https://github.com/facebookresearch/detectron2.git@$(DETECTRON2_COMMIT))

.PHONY: setup ext check-ext demo test bench clean

setup: $(STAMP)

$(STAMP): setup.py requirements/toolkits.txt requirements/tests.txt requirements/detectron2.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools<70" wheel
	# torch first: everything below builds or resolves against it.
	$(PIP) install -q "$(TORCH_SPEC)" "torchvision==$(TORCHVISION_VERSION)"
	$(PIP) install -q -r requirements/build.txt
	# mmcv ships only a source distribution; its ops need MMCV_WITH_OPS=1 and
	# the torch above, hence no build isolation.
	MMCV_WITH_OPS=1 MAX_JOBS=$(MAX_JOBS) $(PIP) install --no-build-isolation "mmcv==2.1.0"
	# The torch above stays: named here, a conflict stops pip instead of letting it swap torch.
	$(PIP) install -q "$(TORCH_SPEC)" -r requirements/toolkits.txt -r requirements/tests.txt -r requirements/detectron2.txt
	# Detectron2 from source, its C++ ops compiled against the torch above (no
	# build isolation; --use-pep517: the PEP 517 path whatever pip and setuptools meet).
	$(if $(wildcard $(DETECTRON2_TARBALL)),rm -rf $(DETECTRON2_BUILD) && mkdir -p $(DETECTRON2_BUILD) && tar -xzf $(DETECTRON2_TARBALL) -C $(DETECTRON2_BUILD))
	MAX_JOBS=$(MAX_JOBS) $(PIP) install -q --no-build-isolation --use-pep517 "$(DETECTRON2_SOURCE)"
	# This package. No build isolation: setup.py builds the native CPU kernels
	# (dgn_plugins._C) and the k-means inner loops (dgn_plugins._kmeans) against
	# the torch above; check-ext below stops here if either is missing.
	$(PIP) install -q --no-deps --no-build-isolation --use-pep517 -e .
	# Resolving packages that depend on torch lets pip upgrade setuptools
	# (torch asks for >=77), which drops pkg_resources; mmengine imports it to
	# resolve `mmdet::`/`mmseg::` config inheritance. Pin it back, last.
	$(PIP) install -q "setuptools<70"
	$(PY) -c "import pkg_resources, mmcv.ops, mmdet, mmseg, mmpretrain, dgn_plugins, shapely, imagecorruptions"
	$(PY) -c "import torch, torchvision, detectron2._C; from detectron2 import model_zoo; \
	  from torchvision.ops import nms; nms(torch.zeros(1, 4), torch.ones(1), 0.5); \
	  model_zoo.get_config_file('Misc/mask_rcnn_R_50_FPN_3x_gn.yaml'); \
	  print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'Detectron2 built with its ops and configs')"
	$(MAKE) --no-print-directory check-ext
	touch $(STAMP)

# Both native extensions must have built: without them regrouping and the CPU
# kernels fall back to paths tens of times slower, and their tests skip.
check-ext:
	@$(PY) -c "import dgn_plugins._C; print('dgn_plugins._C (native CPU kernels): built')" || \
	  { echo "dgn_plugins._C (native CPU kernels) did not build; \`$(PIP) install -v --no-deps --no-build-isolation --use-pep517 -e .\` shows why" >&2; exit 1; }
	@$(PY) -c "import dgn_plugins._kmeans; print('dgn_plugins._kmeans (k-means inner loops): built')" || \
	  { echo "dgn_plugins._kmeans (k-means inner loops) did not build; \`$(PIP) install -v --no-deps --no-build-isolation --use-pep517 -e .\` shows why" >&2; exit 1; }

# Rebuild the native extensions after editing dgn_plugins/csrc.
ext: setup
	$(PIP) install -q --no-deps --no-build-isolation --use-pep517 -e .
	$(MAKE) --no-print-directory check-ext

demo: setup
	$(PY) tools/demo.py

# ruff first (pyproject.toml), then the whole suite, Detectron2's tests included:
# DGN_REQUIRE_DETECTRON2 makes them fail rather than skip when Detectron2 (or
# what they need) is missing.
test: setup
	$(PY) -m ruff check .
	DGN_REQUIRE_DETECTRON2=1 $(PY) -m pytest -q tests

# The solver benchmarks' reference, k-means-constrained, pins protobuf<7 (ortools);
# install it in a separate environment, not in the test one (README, Benchmarks).
bench: setup
	$(PY) bench/bench_layer.py
	$(PY) bench/bench_resnet.py
	$(PY) bench/bench_regroup.py

clean:
	rm -rf $(VENV) build *.egg-info dgn_plugins/_C*.so dgn_plugins/_kmeans*.so

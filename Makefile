# One-command set-up for a fresh machine (Python 3.11, CPU only).
# `make demo` runs the main job, `make test` runs the test suite; both create
# their virtual environments on first use. Two tested stacks (README, "Tested
# stacks"), each one environment for both toolkits (OpenMMLab and Detectron2):
#   STACK=torch2.13 (default, .venv): torch 2.13, the newest mmcv 2.1.0 builds on;
#   STACK=torch2.1  (.venv-torch2.1): torch 2.1.2 + numpy<2, the OpenMMLab 3.x stack.
# `make test` tests both. pip's wheel cache makes re-runs fast (mmcv 2.1.0 has
# no prebuilt wheel and is compiled once per stack, ~17 min on 2 cores;
# Detectron2 is built from source each time an environment is made, ~2-4 min).
PYTHON ?= python3.11
STACK ?= torch2.13
# The two tested stacks (README, "Tested stacks"); `make test` runs both.
STACKS := torch2.13 torch2.1
MAX_JOBS ?= 2
# bash: `make test` labels each stack's lines through a pipe and must keep its exit status.
SHELL := /bin/bash

ifeq ($(STACK),torch2.13)
VENV := .venv
# The checkout itself is installed (editable).
SRC := .
MMCV_CACHE :=
else ifeq ($(STACK),torch2.1)
VENV := .venv-torch2.1
# The old stack installs a copy of the checkout: an editable install compiles
# dgn_plugins/_C*.so in place, and both stacks' builds have the same file name.
SRC := build/torch2.1/src
# pip keys its wheel cache by the source, not by the torch a wheel was built
# against: mmcv built for torch 2.1 gets its own cache.
MMCV_CACHE = --cache-dir "$$($(PIP) cache dir)/mmcv-torch2.1"
# The old stack's run (issue 22): the core and GroupNorm suites, kernels, compile
# and export, checkpoints, and the mmdet, mmseg, mmpretrain and Detectron2 tests
# that train, regroup and resume. Left to the current stack: the tools that
# only read files and tables (COCO/mIoU comparison, plots, records, release
# metadata), the robustness and demo studies, the GPU check's CPU-only paths.
PYTEST_IGNORE := tests/test_compare_coco.py tests/test_compare_miou.py \
  tests/test_plot_groups.py tests/test_release.py tests/test_gpu_check.py \
  tests/test_robustness.py tests/test_robustness_classification.py \
  tests/test_demo_noise.py tests/openmmlab/test_demo_noise_record.py \
  tests/openmmlab/test_real_dumps.py tests/openmmlab/test_robustness_mmdet.py \
  tests/openmmlab/test_robustness_mmpretrain.py tests/detectron2/test_d2_robustness.py
else
$(error STACK is torch2.13 or torch2.1, not '$(STACK)')
endif

PY := $(abspath $(VENV))/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The native extensions as last built in this environment: setup builds them,
# `make ext` rebuilds them only when their sources are newer.
EXT_STAMP := $(VENV)/.ext-built
EXT_SOURCES := setup.py $(wildcard dgn_plugins/csrc/*)
STACK_REQUIREMENTS := requirements/stack-$(STACK).txt

# Detectron2 is on no registry: built from source, this commit. From a copy of
# its source when there is one (unmodified, as `git archive` makes it, top
# folder detectron2/), else from its repository. Extracted under build/, which
# git ignores; never part of the project. One copy per stack: its build folder
# holds objects compiled against that stack's torch.
DETECTRON2_COMMIT ?= 02b5c4e295e990042a714712c21dc79b731e8833
DETECTRON2_TARBALL ?= ../shared/third_party/detectron2-02b5c4e2.tar.gz
DETECTRON2_BUILD := build/$(STACK)/detectron2-src
DETECTRON2_SOURCE := $(if $(wildcard $(DETECTRON2_TARBALL)),$(DETECTRON2_BUILD)/detectron2,git+https://github.com/facebookresearch/detectron2.git@$(DETECTRON2_COMMIT))

.PHONY: setup sync-src ext check-ext demo test test-stack wheel-check bench clean $(addprefix test-labelled-,$(STACKS))

setup: $(STAMP)

$(STAMP): setup.py $(STACK_REQUIREMENTS) requirements/build.txt requirements/toolkits.txt requirements/tests.txt requirements/detectron2.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools<70" wheel
	# torch first (with this stack's pins): everything below builds or resolves against it.
	$(PIP) install -q -r $(STACK_REQUIREMENTS)
	$(PIP) install -q -r $(STACK_REQUIREMENTS) -r requirements/build.txt
	# mmcv's setup.py imports pkg_resources, which setuptools>=70 no longer has. Its own
	# step: torch 2.13 asks for setuptools>=77.0.3, so pip only warns here, where one
	# resolve with torch's pin would fail (ResolutionImpossible).
	$(PIP) install -q "setuptools<70"
	# mmcv ships only a source distribution; its ops need MMCV_WITH_OPS=1 and
	# the torch above, hence no build isolation. -g0: without the debug
	# information Python's flags ask for, the compile is faster and smaller.
	MMCV_WITH_OPS=1 MAX_JOBS=$(MAX_JOBS) CFLAGS="$$CFLAGS -g0" $(PIP) install $(MMCV_CACHE) --no-build-isolation -r $(STACK_REQUIREMENTS) "mmcv==2.1.0"
	# The stack's pins named again: a conflict stops pip instead of letting it swap torch or numpy.
	$(PIP) install -q -r $(STACK_REQUIREMENTS) -r requirements/toolkits.txt -r requirements/tests.txt -r requirements/detectron2.txt
	# Detectron2 from source, its C++ ops compiled against the torch above (no
	# build isolation; --use-pep517: the PEP 517 path whatever pip and setuptools meet).
	$(if $(wildcard $(DETECTRON2_TARBALL)),rm -rf $(DETECTRON2_BUILD) && mkdir -p $(DETECTRON2_BUILD) && tar -xzf $(DETECTRON2_TARBALL) -C $(DETECTRON2_BUILD))
	MAX_JOBS=$(MAX_JOBS) $(PIP) install -q --no-build-isolation --use-pep517 "$(DETECTRON2_SOURCE)"
	# This package. No build isolation: setup.py builds the native CPU kernels
	# (dgn_plugins._C) and the k-means inner loops (dgn_plugins._kmeans) against
	# the torch above; check-ext below stops here if either is missing.
	$(MAKE) --no-print-directory sync-src
	cd $(SRC) && $(PIP) install -q --no-deps --no-build-isolation --use-pep517 -e .
	# Resolving packages that depend on torch lets pip upgrade setuptools
	# (torch asks for >=77), which drops pkg_resources; mmengine imports it to
	# resolve `mmdet::`/`mmseg::` config inheritance. Pin it back, last.
	$(PIP) install -q "setuptools<70"
	cd $(SRC) && $(PY) -c "import pkg_resources, mmcv.ops, mmdet, mmseg, mmpretrain, dgn_plugins, shapely, timm, imagecorruptions"
	$(PY) -c "import torch, torchvision, detectron2._C; from detectron2 import model_zoo; \
	  from torchvision.ops import nms; nms(torch.zeros(1, 4), torch.ones(1), 0.5); \
	  model_zoo.get_config_file('Misc/mask_rcnn_R_50_FPN_3x_gn.yaml'); \
	  print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'Detectron2 built with its ops and configs')"
	$(MAKE) --no-print-directory check-ext
	touch $(STAMP)
	touch $(EXT_STAMP)

# The old stack's copy of the checkout: tracked and new (not ignored) files,
# refreshed before each use; its compiled extensions and build folder stay.
sync-src:
ifneq ($(SRC),.)
	mkdir -p $(SRC)
	find $(SRC) -mindepth 1 -type f ! -name '*.so' ! -path '$(SRC)/build/*' -delete
	git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(SRC)
endif

# Both native extensions must have built: without them regrouping and the CPU
# kernels fall back to paths tens of times slower, and their tests skip.
check-ext:
	@cd $(SRC) && $(PY) -c "import dgn_plugins._C; print('dgn_plugins._C (native CPU kernels): built against torch', __import__('torch').__version__)" || \
	  { echo "dgn_plugins._C (native CPU kernels) did not build; \`cd $(SRC) && $(PIP) install -v --no-deps --no-build-isolation --use-pep517 -e .\` shows why" >&2; exit 1; }
	@cd $(SRC) && $(PY) -c "import dgn_plugins._kmeans; print('dgn_plugins._kmeans (k-means inner loops): built')" || \
	  { echo "dgn_plugins._kmeans (k-means inner loops) did not build; \`cd $(SRC) && $(PIP) install -v --no-deps --no-build-isolation --use-pep517 -e .\` shows why" >&2; exit 1; }

# Rebuild the native extensions after editing dgn_plugins/csrc (the old stack's
# copy is refreshed first; ninja recompiles only what changed). Nothing to do
# when setup has just built them from the same sources.
# (A make of its own after setup: only then does it see the stamp setup left.)
ext: setup
	$(MAKE) --no-print-directory $(EXT_STAMP)

$(EXT_STAMP): $(EXT_SOURCES)
	$(MAKE) --no-print-directory sync-src
	cd $(SRC) && $(PY) setup.py -q build_ext --inplace
	$(MAKE) --no-print-directory check-ext
	touch $(EXT_STAMP)

demo: setup
	$(PY) tools/demo.py

# Both stacks, side by side: one stack's downloads and single-threaded test
# stretches fill the cores while the other compiles (CI once ran past its 90
# minutes one stack after the other). Each line is labelled with
# its stack; either failing fails `make test`. ruff first (pyproject.toml), then
# the whole suite on each, Detectron2's tests included: DGN_REQUIRE_DETECTRON2
# makes them fail rather than skip when Detectron2 (or what they need) is missing.
test:
	@echo "make test: stacks $(STACKS) side by side, started $$(date -u +%T)"
	$(MAKE) --no-print-directory -j2 $(addprefix test-labelled-,$(STACKS))
	@echo "make test: passed on $(STACKS), finished $$(date -u +%T)"

$(addprefix test-labelled-,$(STACKS)): test-labelled-%:
	set -o pipefail; $(MAKE) --no-print-directory test-stack STACK=$* 2>&1 | sed -u 's/^/[$*] /'

# One stack's suite (`make test-stack STACK=torch2.1` for the old one alone),
# then its wheel check. Its own temporary folders, so that two stacks can run at once.
# A test still running after TEST_TIMEOUT seconds (the slowest takes about a
# minute) is a hang: pytest-timeout prints every thread's stack and stops the
# suite, instead of CI running out of time with no word of where it stuck.
TEST_TIMEOUT ?= 600
STACK_TMP := /tmp/dgn-plugins-$(STACK)-$(notdir $(abspath .))
test-stack: ext
	@echo "$$(date -u +%T) $(STACK): environment ready; suite starts"
	$(MAKE) --no-print-directory sync-src
	$(if $(filter .,$(SRC)),$(PY) -m ruff check .)
	mkdir -p $(STACK_TMP)
	cd $(SRC) && DGN_REQUIRE_DETECTRON2=1 TORCHINDUCTOR_CACHE_DIR=$(STACK_TMP)/inductor \
	  $(PY) -m pytest -q --durations=25 --timeout=$(TEST_TIMEOUT) --timeout-method=thread \
	  --basetemp=$(STACK_TMP)/pytest tests $(addprefix --ignore=,$(PYTEST_IGNORE))
	@# What the tests wrote (several GB: checkpoints, work dirs) is kept only when they fail.
	rm -rf $(STACK_TMP)/pytest
	@echo "$$(date -u +%T) $(STACK): suite passed; wheel check starts"
	$(MAKE) --no-print-directory wheel-check
	@echo "$$(date -u +%T) $(STACK): wheel check passed"

# A user's non-editable install, checked: an sdist, a wheel built from it
# against this stack's torch (no build isolation), then .ci/check_wheel.py: the
# wheel holds both extensions, the configs, the tools and the license, and in a
# throwaway environment (sharing this one's packages, not the checkout) DGN runs
# forward and backward with the native kernels.
WHEEL_DIR := $(abspath build/$(STACK)/wheel-check)
wheel-check: setup
	$(MAKE) --no-print-directory sync-src
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	cd $(SRC) && $(PY) setup.py -q sdist -d $(WHEEL_DIR)
	MAX_JOBS=$(MAX_JOBS) $(PIP) wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) $(WHEEL_DIR)/*.tar.gz
	$(PY) $(abspath .ci/check_wheel.py) $(WHEEL_DIR)/*.whl $(WHEEL_DIR)/venv

# The solver benchmarks' reference, k-means-constrained, pins protobuf<7 (ortools);
# install it in a separate environment, not in the test one (README, Benchmarks).
bench: setup
	cd $(SRC) && $(PY) bench/bench_layer.py
	cd $(SRC) && $(PY) bench/bench_resnet.py
	cd $(SRC) && $(PY) bench/bench_regroup.py

clean:
	rm -rf .venv .venv-torch2.1 build *.egg-info dgn_plugins/_C*.so dgn_plugins/_kmeans*.so

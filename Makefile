# One-command set-up for a fresh machine (Python 3.11, CPU only).
# `make demo` runs the main job, `make test` runs the test suite; both create
# the virtual environment on first use. pip's wheel cache makes re-runs fast
# (mmcv 2.1.0 has no prebuilt wheel and is compiled once, ~17 min on 2 cores).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup ext demo test bench clean

setup: $(STAMP)

$(STAMP): setup.py requirements/toolkits.txt requirements/tests.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools<70" wheel
	# torch first: everything below builds or resolves against it.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -r requirements/build.txt
	# mmcv ships only a source distribution; its ops need MMCV_WITH_OPS=1 and
	# the torch above, hence no build isolation.
	MMCV_WITH_OPS=1 MAX_JOBS=2 $(PIP) install --no-build-isolation "mmcv==2.1.0"
	$(PIP) install -q -r requirements/toolkits.txt -r requirements/tests.txt
	# No build isolation: setup.py builds the native CPU kernels (dgn_plugins._C)
	# and the k-means inner loops (dgn_plugins._kmeans) against the torch installed
	# above (without torch or a compiler it installs pure Python).
	$(PIP) install -q --no-deps --no-build-isolation -e .
	# Resolving packages that depend on torch lets pip upgrade setuptools
	# (torch asks for >=77), which drops pkg_resources; mmengine imports it to
	# resolve `mmdet::`/`mmseg::` config inheritance. Pin it back, last.
	$(PIP) install -q "setuptools<70"
	$(PY) -c "import pkg_resources, mmcv.ops, mmdet, mmseg, dgn_plugins"
	$(PY) -c "from dgn_plugins import ops as m; print('dgn_plugins._C (native CPU kernels): ' + ('built' if m.native_available() else 'NOT built, CPU falls back to slower paths: ' + str(m.native_import_error())))"
	$(PY) -c "from dgn_plugins import kmeans as m; print('dgn_plugins._kmeans (k-means inner loops): ' + ('built' if m._compiled() is not None else 'NOT built, regrouping runs the slower numpy code'))"
	touch $(STAMP)

# Rebuild the native extensions after editing dgn_plugins/csrc.
ext: setup
	$(PIP) install -q --no-deps --no-build-isolation -e .

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

# The solver benchmarks' reference, k-means-constrained, pins protobuf<7 (ortools);
# install it in a separate environment, not in the test one (README, Benchmarks).
bench: setup
	$(PY) bench/bench_layer.py
	$(PY) bench/bench_resnet.py
	$(PY) bench/bench_regroup.py

clean:
	rm -rf $(VENV) build *.egg-info dgn_plugins/_C*.so dgn_plugins/_kmeans*.so

# walnet developer commands. `make test` works on a fresh clone: it creates .venv, installs the
# pinned dependencies, builds the C++ (and, where nvcc is found, CUDA) operators and runs pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# ninja and the venv's tools first on PATH (torch's extension builder looks for ninja there).
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: test build venv demo demo-check package-check bench bench-table ctest device-check clean

test: build
	$(PY) -m pytest
	$(MAKE) ctest
	$(MAKE) package-check

venv: $(VENV)/.stamp-deps

$(VENV)/.stamp-deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# GPU archs of the development build: one (sm_90), so CI and `make` compile quickly. A wheel or
# `pip install .` without TORCH_CUDA_ARCH_LIST builds for every arch of the installed torch.
TORCH_CUDA_ARCH_LIST ?= 9.0
export TORCH_CUDA_ARCH_LIST

# Incremental (ninja) in-place build of walnet._C, then walnet installed into .venv in editable
# mode (the `walnet` command included; `source .venv/bin/activate` puts it on the PATH).
build: venv
	$(PY) setup.py build_ext --inplace
	$(MAKE) $(VENV)/.stamp-editable

# The editable install links the source tree, so the in-place build above is what it imports;
# WALNET_NO_EXTENSION=1 keeps pip from compiling the extension a second time.
$(VENV)/.stamp-editable: pyproject.toml setup.py | venv
	WALNET_NO_EXTENSION=1 $(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

# From the sources to an installed wheel, as a user would: `python -m build` makes the sdist and
# a CPU-only wheel from it, which is installed outside the source tree and imported there
# (tools/check_package.py).
package-check: venv
	$(PY) tools/check_package.py

# The whole pipeline on the embedded phantom (no data, no download, CPU): phantom -> train ->
# evaluate -> $(DEMO_DIR)/report.md with figures. Prints the test accuracy and pseudo-mask IoU.
DEMO_DIR ?= demo-output
demo: build
	$(PY) -m walnet demo --output $(DEMO_DIR)

# Runs the demo into a fresh temporary folder and fails, printing both lines and the differing
# numbers, when its printed result differs from the line quoted in README.md's demo-output block
# (the elapsed seconds aside). `$(PY) tools/check_readme_demo.py --log FILE` checks saved output.
demo-check: build
	$(PY) tools/check_readme_demo.py

bench: build
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only -p no:randomly

bench-table: build
	$(PY) benchmarks/pgm_table.py

# The C++ library and its C++ test, through CMake (CPU kernels; -DWALNET_CUDA=ON adds CUDA).
ctest: venv
	cmake -S . -B build-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build-cmake
	cd build-cmake && ctest --output-on-failure

device-check:
	bash benchmarks/device_check.sh

clean:
	rm -rf build build-cmake walnet/_C*.so walnet/_build.json

# walnet developer commands. `make test` works on a fresh clone: it creates .venv, installs the
# pinned dependencies, builds the C++ (and, where nvcc is found, CUDA) operators and runs pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# ninja and the venv's tools first on PATH (torch's extension builder looks for ninja there).
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: test build venv demo demo-check bench bench-table ctest device-check clean

test: build
	$(PY) -m pytest
	$(MAKE) ctest

venv: $(VENV)/.stamp-deps

$(VENV)/.stamp-deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# Incremental (ninja) in-place build of walnet._C; prints the nvcc lines when CUDA is built.
build: venv
	$(PY) setup.py build_ext --inplace

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
	rm -rf build build-cmake walnet/_C*.so

#!/usr/bin/env bash
# Device check: run on a machine with an NVIDIA GPU (for example through the device tool).
#   1. builds walnet with its CUDA kernels for the visible card;
#   2. runs the whole test suite (CUDA cases included; they are skipped only without a GPU);
#   3. runs the CUDA tests under compute-sanitizer (memcheck, racecheck, synccheck, initcheck);
#   4. prints the benchmark ratio tables on the GPU (and on the CPU for comparison).
# Later ops add their tests and tables here. Exit status: non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== build"
unset TORCH_CUDA_ARCH_LIST  # build for the visible card
WALNET_CUDA=1 "$PY" setup.py build_ext --inplace 2>&1 | grep -E "nvcc|error|warning: .*walnet" || true
"$PY" -c "import walnet; b = walnet.built_backends(); print('built backends:', sorted(b)); assert 'cuda' in b"

echo "== tests"
"$PY" -m pytest tests -q -x -p no:cacheprovider

echo "== compute-sanitizer"
SANITIZER=${SANITIZER:-compute-sanitizer}
command -v "$SANITIZER" >/dev/null || SANITIZER=/usr/local/cuda/bin/compute-sanitizer
OP_TESTS=(tests/test_fuse_attention.py tests/test_superpixel_mean.py tests/test_pseudo_mask.py tests/test_pgm.py
          tests/test_mask_boxes.py tests/test_crop_resize.py tests/test_crop_resize_backward.py tests/test_roi_crop.py
          tests/test_felzenszwalb.py tests/test_felzenszwalb_api.py tests/test_felzenszwalb_skimage.py)
CUDA_TESTS=("${OP_TESTS[@]}" -k "cuda" -q -x -p no:cacheprovider)
for tool in memcheck racecheck synccheck initcheck; do
  echo "-- $tool"
  WALNET_SANITIZER=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 1 \
    --target-processes all "$PY" -m pytest "${CUDA_TESTS[@]}"
done

echo "== benchmarks"
for table in pgm_table rcm_table felzenszwalb_table; do
  for device in cuda cpu; do  # the CPU row beside the GPU's, for comparison
    "$PY" "benchmarks/$table.py" --device "$device"
  done
done
"$PY" benchmarks/step_table.py --device cuda

#!/usr/bin/env bash
# Device check (`make device-check`): run on a machine with an NVIDIA GPU (about 20 minutes on an
# H100/H200 with a prebuilt extension). PARTS picks what runs, so that each part fits one short
# command: PARTS=kernels (step K, at most 8 minutes), PARTS=checks (steps 2-3, about 8 minutes),
# PARTS=tables (4-5, about 7 minutes); default all three.
#   K. the preview kernels (walnet.ops.PREVIEW), with WALNET_PREVIEW_KERNELS=1: their CUDA tests
#      (labels and round counts equal to the CPU's on the corpus, CUDA-graph replays), then
#      compute-sanitizer memcheck, racecheck and synccheck on benchmarks/sanitize_ops.py (every
#      state layout of the warp kernel, forced on small images), then old-vs-new timings in one
#      process each (felzenszwalb_table: block vs warp kernel; rcm_table: per level vs one pass;
#      pgm_table: the PGM with the preview kernels). A preview kernel becomes the default once this
#      part passes on a GPU.
#   1. uses walnet/_C.abi3.so as it is when it loads with CUDA kernels (a prebuilt extension,
#      carried to the machine), else builds one for the visible card;
#   2. runs every CUDA case of the op and model tests (-k cuda), without stopping at the first
#      failure;
#   3. runs benchmarks/sanitize_ops.py (every op once, small inputs) under compute-sanitizer's
#      memcheck, racecheck and synccheck;
#   4. prints the GPU ratio tables (CPU_TABLES=1: the CPU rows too);
#   5. prints the training-throughput tables (benchmarks/train_throughput.py: the bare step
#      eager and graphed at batch 8 and 32, compiled + graphed for WAL-Net at batch 8, and a
#      phantom epoch, generated into $PHANTOM) and the graphed-vs-eager losses per step.
# Every step has its own time limit; the output goes to stdout and, where $OUT is set, to
# $OUT/device_check.log. Exit status: the number of failed steps (0 when all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT_TESTS=${LIMIT_TESTS:-240}
LIMIT_SANITIZER=${LIMIT_SANITIZER:-90}
LIMIT_TABLE=${LIMIT_TABLE:-90}
LIMIT_THROUGHPUT=${LIMIT_THROUGHPUT:-600}
PHANTOM=${PHANTOM:-${TMPDIR:-/tmp}/walnet-phantom-224}
MIN_RUN_TIME=${MIN_RUN_TIME:-0.2}
if [ -n "${OUT:-}" ]; then
  exec > >(tee -a "$OUT/device_check.log") 2>&1
fi
failed=0

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, reports its status
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

if "$PY" -c "import walnet, sys; sys.exit(0 if 'cuda' in walnet.built_backends() else 1)" 2>/dev/null; then
  echo "== build: using the extension in place (it has CUDA kernels)"
else
  unset TORCH_CUDA_ARCH_LIST  # build for the visible card
  step build 900 env WALNET_CUDA=1 "$PY" setup.py build_ext --inplace
fi
"$PY" -c "import walnet; b = walnet.built_backends(); print('built backends:', sorted(b)); assert 'cuda' in b" \
  || exit 1

# The op, model and training-step tests.
OP_TESTS=(tests/test_cuda_graphs.py tests/test_fuse_attention.py tests/test_superpixel_mean.py tests/test_pseudo_mask.py tests/test_pgm.py
          tests/test_mask_boxes.py tests/test_crop_resize.py tests/test_crop_resize_backward.py tests/test_roi_crop.py
          tests/test_roi_boxes.py tests/test_crop_levels.py tests/test_hostile_ops.py
          tests/test_felzenszwalb.py tests/test_felzenszwalb_api.py tests/test_felzenszwalb_skimage.py
          tests/test_models.py tests/test_step.py tests/test_train.py tests/test_schedule.py tests/test_class_balance.py)
PARTS=${PARTS:-kernels,checks,tables}
SANITIZER=${SANITIZER:-compute-sanitizer}
command -v "$SANITIZER" >/dev/null || SANITIZER=/usr/local/cuda/bin/compute-sanitizer

if [[ ,$PARTS, == *,kernels,* ]]; then
PREVIEW_TESTS=(tests/test_felzenszwalb.py tests/test_felzenszwalb_api.py tests/test_felzenszwalb_skimage.py
               tests/test_felzenszwalb_rounds.py tests/test_cuda_graphs.py tests/test_roi_boxes.py
               tests/test_crop_levels.py tests/test_roi_crop.py tests/test_hostile_ops.py tests/test_pgm.py)
step "preview kernels: CUDA tests" "${LIMIT_PREVIEW_TESTS:-240}" env WALNET_PREVIEW_KERNELS=1 "$PY" -m pytest \
  "${PREVIEW_TESTS[@]}" -q -k cuda -p no:cacheprovider -p no:randomly
for tool in memcheck racecheck synccheck; do
  step "preview kernels: compute-sanitizer $tool" "$LIMIT_SANITIZER" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool "$tool" --error-exitcode 1 --target-processes all "$PY" benchmarks/sanitize_ops.py \
    --device cuda
done
step "preview kernels: felzenszwalb_table cuda" "$LIMIT_TABLE" "$PY" benchmarks/felzenszwalb_table.py --device cuda \
  --min-run-time "$MIN_RUN_TIME"
step "preview kernels: rcm_table cuda" "$LIMIT_TABLE" env WALNET_PREVIEW_KERNELS=1 "$PY" benchmarks/rcm_table.py \
  --device cuda --min-run-time "$MIN_RUN_TIME"
step "preview kernels: pgm_table cuda" "$LIMIT_TABLE" env WALNET_PREVIEW_KERNELS=1 "$PY" benchmarks/pgm_table.py \
  --device cuda --min-run-time "$MIN_RUN_TIME"
fi

if [[ ,$PARTS, == *,checks,* ]]; then
step "CUDA tests" "$LIMIT_TESTS" "$PY" -m pytest "${OP_TESTS[@]}" -q -k cuda -p no:cacheprovider -p no:randomly

for tool in memcheck racecheck synccheck; do
  step "compute-sanitizer $tool" "$LIMIT_SANITIZER" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool "$tool" --error-exitcode 1 --target-processes all "$PY" benchmarks/sanitize_ops.py --device cuda
done

fi

if [[ ,$PARTS, == *,tables,* ]]; then
DEVICES=(cuda)
[ -n "${CPU_TABLES:-}" ] && DEVICES+=(cpu)  # CPU_TABLES=1: the CPU rows too, from the same machine
for table in pgm_table rcm_table felzenszwalb_table; do
  for device in "${DEVICES[@]}"; do
    step "$table $device" "$LIMIT_TABLE" "$PY" "benchmarks/$table.py" --device "$device" --min-run-time "$MIN_RUN_TIME"
  done
done
step "step_table cuda" "$LIMIT_TABLE" "$PY" benchmarks/step_table.py --device cuda
step "train_throughput cuda" "$LIMIT_THROUGHPUT" "$PY" benchmarks/train_throughput.py --device cuda \
  --modes eager-fp32,eager,graphed --epoch --epoch-modes graphed,eager-fp32 --phantom "$PHANTOM"
# compiling a resnest50d step takes about two minutes per entry: WAL-Net at batch 8 only
step "train_throughput cuda compiled" "$LIMIT_THROUGHPUT" "$PY" benchmarks/train_throughput.py --device cuda \
  --batches 8 --variants walnet --modes compiled+graphed
step "graph_vs_eager cuda" "$LIMIT_TABLE" "$PY" benchmarks/graph_vs_eager.py
fi

echo "== device check: $failed step(s) failed"
exit "$failed"

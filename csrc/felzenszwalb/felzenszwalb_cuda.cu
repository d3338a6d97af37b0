// CUDA kernels of the Felzenszwalb op: the same labels as the CPU op, bit for bit, by Kruskal by
// deterministic reservations ("sequential" is CPU-only).
// Per batch: Gaussian smoothing (rows, then columns) and edge weights in float64 without FMA;
// a segmented stable sort of every image's edges by weight (CUB); then all rounds of both passes
// and the numbering of the components inside one kernel, by one of two:
//   "reservations": kruskal_warp_kernel, one warp per image running the rounds of warp_rounds.h
//     with the image's state in shared memory where it fits (fz::warp_plan), no block barrier;
//   "block": kruskal_kernel, one 1,024-thread block per image running the rounds of
//     felzenszwalb.h (a positional window of kWindow sorted edges, state in global memory).
// Nothing is read back by the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <tuple>

#include "../common/checks.h"
#include "../common/cuda_launch.cuh"
#include "felzenszwalb.h"
#include "felzenszwalb_args.h"
#include "warp_rounds.h"

namespace walnet {
namespace {

using fz::kWindow;  // threads of the per-image block = sorted edges per round

// The Gaussian kernel by value (a kernel argument), so no host-to-device copy is needed.
constexpr int kMaxTaps = 64;  // radius <= 63: sigma up to 15.6
struct Taps {
  double w[kMaxTaps];
  int64_t r;
};

// axis 0: along H (stride W); axis 1: along W (stride 1). One thread per output sample.
__global__ void smooth_kernel(const double* in, double* out, Taps taps, int64_t H, int64_t W, int axis,
                              int64_t total) {
  WALNET_GRID_STRIDE(i, total) {
    const int64_t plane = i / (H * W), y = (i / W) % H, x = i % W;
    const double* base = in + plane * H * W;
    out[i] = axis == 0 ? fz::smooth_sample(base + x, W, H, y, taps.w, taps.r)
                       : fz::smooth_sample(base + y * W, 1, W, x, taps.w, taps.r);
  }
}

__global__ void edge_kernel(const double* img, int64_t C, int64_t H, int64_t W, int64_t E, int64_t total,
                            double* weights, int32_t* index) {
  WALNET_GRID_STRIDE(i, total) {
    const int64_t n = i / E, e = i % E;
    int32_t p, q;
    fz::edge_endpoints(e, H, W, &p, &q);
    weights[i] = fz::edge_weight(img + n * C * H * W, C, H * W, p, q);
    index[i] = static_cast<int32_t>(e);
  }
}

__global__ void gather_sorted_kernel(const int32_t* index, int64_t H, int64_t W, int64_t total,
                                     int32_t* ep, int32_t* eq) {
  WALNET_GRID_STRIDE(i, total) {
    fz::edge_endpoints(index[i], H, W, ep + i, eq + i);
  }
}

// The sorted edges as records (endpoints and weight) for the warp kernel's ring.
__global__ void gather_records_kernel(const int32_t* index, const double* weight, int64_t H, int64_t W,
                                      int64_t total, fz::SortedEdge* out) {
  WALNET_GRID_STRIDE(i, total) {
    fz::SortedEdge e;
    fz::edge_endpoints(index[i], H, W, &e.p, &e.q);
    e.w = weight[i];
    out[i] = e;
  }
}

// One warp (one block) per image: both passes of warp_rounds.h and the numbering. The state of
// the image is in shared memory after the warp's scratch (Index = uint16_t: parent, size and,
// with kTauShared, tau) or in global memory (Index = int32_t).
template <typename Index, bool kTauShared>
__global__ void __launch_bounds__(warp::kLanes)
    kruskal_warp_kernel(fz::SortedEdge* edges, int64_t E, int64_t HW, Index* g_parent, Index* g_size, float* g_tau,
                        double k, int32_t min_size, fz::RoundRules rules, int32_t* labels, int32_t* rounds) {
  extern __shared__ __align__(16) unsigned char shared[];
  auto& scratch = *reinterpret_cast<fz::WarpScratch*>(shared);
  const int64_t n = blockIdx.x;
  unsigned char* state = shared + fz::scratch_bytes();
  fz::Forest<Index> f;
  if constexpr (sizeof(Index) == 2) {
    f.parent = reinterpret_cast<Index*>(state);
    f.size = f.parent + HW;
  } else {
    f.parent = g_parent + n * HW;
    f.size = g_size + n * HW;
  }
  if constexpr (kTauShared) {
    f.tau = reinterpret_cast<float*>(state + 4 * HW);
  } else {
    f.tau = g_tau + n * HW;
  }
  fz::segment_warp(warp::Warp{}, scratch, f, edges + n * E, HW, E, k, min_size, rules, labels + n * HW, rounds + 2 * n);
}

template <typename Index, bool kTauShared>
void launch_warp(const fz::WarpPlan& plan, fz::SortedEdge* edges, int64_t N, int64_t E, int64_t HW, double k,
                 int32_t min_size, const fz::RoundRules& rules, const at::TensorOptions& opts, at::Tensor& labels,
                 at::Tensor& rounds) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto kernel = kruskal_warp_kernel<Index, kTauShared>;
  if (plan.shared_bytes > 48 * 1024)
    AT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(plan.shared_bytes)));
  // Global state where the layout keeps it out of shared memory.
  at::Tensor forest, tau;
  Index *parent = nullptr, *size = nullptr;
  float* tau_ptr = nullptr;
  if constexpr (sizeof(Index) == 4) {
    forest = at::empty({2, N * HW}, opts.dtype(at::kInt));
    parent = reinterpret_cast<Index*>(forest[0].mutable_data_ptr<int32_t>());
    size = reinterpret_cast<Index*>(forest[1].mutable_data_ptr<int32_t>());
  }
  if constexpr (!kTauShared) {
    tau = at::empty({N * HW}, opts.dtype(at::kFloat));
    tau_ptr = tau.mutable_data_ptr<float>();
  }
  kernel<<<N, warp::kLanes, plan.shared_bytes, stream>>>(edges, E, HW, parent, size, tau_ptr, k, min_size, rules,
                                                        labels.mutable_data_ptr<int32_t>(),
                                                        rounds.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct ImageBuffers {
  const int32_t *ep, *eq;
  const double* ew;
  int32_t *parent, *size, *bids, *ra, *rb;
  double* cint;
  uint8_t* decided;
};

__global__ void __launch_bounds__(kWindow) kruskal_kernel(ImageBuffers b, int64_t HW, int64_t E, double k,
                                                          int32_t min_size, int32_t* labels, int32_t* rounds) {
  const int64_t n = blockIdx.x;
  const int t = threadIdx.x;
  fz::PassState st{b.ep + n * E, b.eq + n * E, b.ew + n * E, b.parent + n * HW, b.size + n * HW, b.cint + n * HW,
                   b.bids + n * HW, b.decided + n * E, b.ra + n * E, b.rb + n * E, k, min_size, false};
  for (int64_t p = t; p < HW; p += kWindow) {
    st.parent[p] = static_cast<int32_t>(p);
    st.size[p] = 1;
    st.cint[p] = 0.0;
    st.bids[p] = fz::kNoBid;
  }
  __shared__ int64_t start;
  __shared__ int32_t round_count;
  for (int pass = 0; pass < 2; ++pass) {
    st.min_size_pass = pass == 1;
    for (int64_t i = t; i < E; i += kWindow) st.decided[i] = 0;
    if (t == 0) start = 0, round_count = 0;
    __syncthreads();
    while (start < E) {
      const int64_t i = start + t;
      const bool bidding = i < E && !st.decided[i] && fz::bid_step(st, i);
      __syncthreads();
      if (bidding) fz::commit_step(st, i);
      __syncthreads();
      if (bidding) fz::release_step(st, i);
      __syncthreads();
      if (t == 0) {
        int64_t s = start;
        while (s < E && st.decided[s]) ++s;
        start = s;
        ++round_count;
      }
      __syncthreads();
    }
    if (t == 0) rounds[2 * n + pass] = round_count;
    __syncthreads();
  }
  // Labels: a pixel that is its own root opens a component; an exclusive scan over the pixels
  // in raster order numbers the roots, and every pixel takes its root's number.
  using Scan = cub::BlockScan<int32_t, kWindow>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int32_t carried;
  if (t == 0) carried = 0;
  __syncthreads();
  int32_t* lab = labels + n * HW;
  for (int64_t base = 0; base < HW; base += kWindow) {
    const int64_t p = base + t;
    const int32_t is_root = p < HW && fz::find_root(st.parent, static_cast<int32_t>(p)) == p ? 1 : 0;
    int32_t offset, total;
    Scan(scan_storage).ExclusiveSum(is_root, offset, total);
    if (is_root) lab[p] = carried + offset;
    __syncthreads();
    if (t == 0) carried += total;
    __syncthreads();
  }
  for (int64_t p = t; p < HW; p += kWindow) {
    const int32_t r = fz::find_root(st.parent, static_cast<int32_t>(p));
    if (r != p) lab[p] = lab[r];
  }
}

std::tuple<at::Tensor, at::Tensor> felzenszwalb_cuda(const at::Tensor& images_, at::ArrayRef<double> weights,
                                                     double k, int64_t min_size, c10::string_view algorithm_name,
                                                     int64_t window, bool compact, bool prefilter, bool chain,
                                                     int64_t shared_limit) {
  check_images(images_, k, min_size);
  const fz::Algorithm algorithm = fz::parse_algorithm(algorithm_name);
  TORCH_CHECK(algorithm != fz::Algorithm::kSequential,
              "felzenszwalb: algorithm='sequential' runs on the CPU only; CUDA runs 'reservations' or 'block'");
  const fz::RoundRules rules = fz::round_rules(window, compact, prefilter, chain);
  const c10::cuda::CUDAGuard guard(images_.device());
  const int64_t limit =
      fz::shared_limit_for(shared_limit, at::cuda::getDeviceProperties(images_.get_device())->sharedMemPerBlockOptin);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto images = images_.contiguous();
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3), HW = H * W;
  const int64_t E = fz::edge_counts(H, W).total();
  const auto opts = images.options();
  auto labels = at::empty({N, H, W}, opts.dtype(at::kInt));
  auto rounds = at::zeros({N, 2}, opts.dtype(at::kInt));
  if (N == 0) return {labels, rounds};

  at::Tensor smooth = images;
  if (!weights.empty()) {
    TORCH_CHECK(weights.size() <= static_cast<size_t>(kMaxTaps), "felzenszwalb (CUDA): at most ", kMaxTaps,
                " Gaussian taps (sigma <= 15.6), got ", weights.size());
    Taps taps{};
    taps.r = static_cast<int64_t>(weights.size()) - 1;
    for (size_t j = 0; j < weights.size(); ++j) taps.w[j] = weights[j];
    auto tmp = at::empty_like(images);
    smooth = at::empty_like(images);
    const int64_t total = images.numel();
    smooth_kernel<<<grid_for(total), kBlock, 0, stream>>>(images.const_data_ptr<double>(), tmp.mutable_data_ptr<double>(),
                                                          taps, H, W, 0, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    smooth_kernel<<<grid_for(total), kBlock, 0, stream>>>(tmp.const_data_ptr<double>(), smooth.mutable_data_ptr<double>(),
                                                          taps, H, W, 1, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (E > 0) {
    const int64_t total = N * E;
    TORCH_CHECK(total < (int64_t(1) << 31), "felzenszwalb: too many edges in one batch for the segmented sort");
    auto keys = at::empty({total}, opts.dtype(at::kDouble)), keys_sorted = at::empty_like(keys);
    auto index = at::empty({total}, opts.dtype(at::kInt)), index_sorted = at::empty_like(index);
    edge_kernel<<<grid_for(total), kBlock, 0, stream>>>(smooth.const_data_ptr<double>(), C, H, W, E, total,
                                                        keys.mutable_data_ptr<double>(), index.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto offsets = at::arange(0, (N + 1) * E, E, opts.dtype(at::kLong));
    const int64_t* off = offsets.const_data_ptr<int64_t>();
    size_t temp_bytes = 0;
    AT_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(
        nullptr, temp_bytes, keys.const_data_ptr<double>(), keys_sorted.mutable_data_ptr<double>(),
        index.const_data_ptr<int32_t>(), index_sorted.mutable_data_ptr<int32_t>(), static_cast<int>(total),
        static_cast<int>(N), off, off + 1, stream));
    auto temp = at::empty({static_cast<int64_t>(temp_bytes)}, opts.dtype(at::kByte));
    AT_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(
        temp.mutable_data_ptr(), temp_bytes, keys.const_data_ptr<double>(), keys_sorted.mutable_data_ptr<double>(),
        index.const_data_ptr<int32_t>(), index_sorted.mutable_data_ptr<int32_t>(), static_cast<int>(total),
        static_cast<int>(N), off, off + 1, stream));
    if (algorithm == fz::Algorithm::kReservations) {
      auto records = at::empty({total * static_cast<int64_t>(sizeof(fz::SortedEdge))}, opts.dtype(at::kByte));
      auto* edges = reinterpret_cast<fz::SortedEdge*>(records.mutable_data_ptr());
      gather_records_kernel<<<grid_for(total), kBlock, 0, stream>>>(index_sorted.const_data_ptr<int32_t>(),
                                                                    keys_sorted.const_data_ptr<double>(), H, W, total,
                                                                    edges);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const fz::WarpPlan plan = fz::warp_plan(HW, limit);
      const int32_t ms = fz::min_size_i32(min_size);
      if (plan.layout == fz::StateLayout::kShared)
        launch_warp<uint16_t, true>(plan, edges, N, E, HW, k, ms, rules, opts, labels, rounds);
      else if (plan.layout == fz::StateLayout::kSplit)
        launch_warp<uint16_t, false>(plan, edges, N, E, HW, k, ms, rules, opts, labels, rounds);
      else
        launch_warp<int32_t, false>(plan, edges, N, E, HW, k, ms, rules, opts, labels, rounds);
      return {labels, rounds};
    }
    auto ep = at::empty({total}, opts.dtype(at::kInt)), eq = at::empty_like(ep);
    gather_sorted_kernel<<<grid_for(total), kBlock, 0, stream>>>(index_sorted.const_data_ptr<int32_t>(), H, W, total,
                                                                 ep.mutable_data_ptr<int32_t>(), eq.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto state = at::empty({4, N * HW}, opts.dtype(at::kInt));
    auto cint = at::empty({N * HW}, opts.dtype(at::kDouble));
    auto per_edge = at::empty({2, total}, opts.dtype(at::kInt));
    auto decided = at::empty({total}, opts.dtype(at::kByte));
    ImageBuffers b{ep.const_data_ptr<int32_t>(), eq.const_data_ptr<int32_t>(), keys_sorted.const_data_ptr<double>(),
                   state[0].mutable_data_ptr<int32_t>(), state[1].mutable_data_ptr<int32_t>(),
                   state[2].mutable_data_ptr<int32_t>(), per_edge[0].mutable_data_ptr<int32_t>(),
                   per_edge[1].mutable_data_ptr<int32_t>(), cint.mutable_data_ptr<double>(),
                   decided.mutable_data_ptr<uint8_t>()};
    kruskal_kernel<<<N, kWindow, 0, stream>>>(b, HW, E, k, fz::min_size_i32(min_size),
                                              labels.mutable_data_ptr<int32_t>(), rounds.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    labels.zero_();  // a 1x1 image: one segment
  }
  return {labels, rounds};
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CUDA, m) {
  m.impl("felzenszwalb", &felzenszwalb_cuda);
}

}  // namespace walnet

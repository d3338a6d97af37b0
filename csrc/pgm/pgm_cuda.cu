// CUDA kernels of the PGM ops. Three launches per op, none of which talks to the host:
// per-sample statistics (one block per sample), a per-pixel pass, and for the segment ops a
// per-pixel write-back. Segment sums use 64-bit integer atomics on fixed-point values
// (pgm.h), so they are bitwise deterministic and equal to the CPU backend.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/cuda_launch.cuh"
#include "pgm.h"

namespace walnet {
namespace {

using pgm::FuseStats;
using pgm::Geometry;
using pgm::geometry_of;
using pgm::MinMax;

// Block-wide min/max; the result is returned to every thread of the block.
template <typename T>
__device__ MinMax<T> block_minmax(MinMax<T> v) {
  __shared__ MinMax<T> buf[kBlock];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x].merge(buf[threadIdx.x + stride]);
    __syncthreads();
  }
  const MinMax<T> out = buf[0];
  __syncthreads();  // buf is reused by the next call
  return out;
}

__device__ double block_max_abs(double v) {
  __shared__ double buf[kBlock];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x] = pgm::max_abs_step(buf[threadIdx.x], buf[threadIdx.x + stride]);
    __syncthreads();
  }
  const double out = buf[0];
  __syncthreads();
  return out;
}

// One block per sample: min/span of each map, then of their product on the a1 grid.
template <typename scalar_t, typename T>
__global__ void fuse_stats_kernel(const scalar_t* a1, const scalar_t* a2, const scalar_t* a3,
                                  Geometry g, FuseStats<T>* stats) {
  const int64_t n = blockIdx.x;
  const scalar_t* s1 = a1 + n * g.H * g.W;
  const scalar_t* s2 = a2 + n * g.h2 * g.w2;
  const scalar_t* s3 = a3 + n * g.h3 * g.w3;
  const scalar_t* maps[3] = {s1, s2, s3};
  const int64_t sizes[3] = {g.H * g.W, g.h2 * g.w2, g.h3 * g.w3};
  FuseStats<T> st;
  st.ok = true;
  for (int m = 0; m < 3; ++m) {
    auto mm = MinMax<T>::empty();
    for (int64_t i = threadIdx.x; i < sizes[m]; i += kBlock) mm.add(static_cast<T>(maps[m][i]));
    mm = block_minmax(mm);
    st.ok = st.ok && mm.informative();
    st.lo[m] = mm.lo;
    st.span[m] = mm.hi - mm.lo;
  }
  if (st.ok) {
    auto prod = MinMax<T>::empty();
    for (int64_t i = threadIdx.x; i < g.H * g.W; i += kBlock)
      prod.add(pgm::fused_product(s1, s2, s3, g, i / g.W, i % g.W, st.lo, st.span));
    prod = block_minmax(prod);
    st.ok = prod.informative();
    st.plo = prod.lo;
    st.pspan = prod.hi - prod.lo;
  }
  if (threadIdx.x == 0) stats[n] = st;
}

template <typename scalar_t, typename T>
__global__ void fuse_write_kernel(const scalar_t* a1, const scalar_t* a2, const scalar_t* a3,
                                  Geometry g, const FuseStats<T>* stats, int64_t total, T* out) {
  const int64_t HW = g.H * g.W;
  WALNET_GRID_STRIDE(i, total) {
    const int64_t n = i / HW, p = i % HW;
    out[i] = pgm::fused_value(a1 + n * HW, a2 + n * g.h2 * g.w2, a3 + n * g.h3 * g.w3, g, p / g.W,
                              p % g.W, stats[n]);
  }
}

__device__ void add_to_segment(int64_t* sums, int* counts, int64_t slot, int64_t q) {
  // Two's-complement addition: the unsigned atomic gives the signed sum, in any order.
  atomicAdd(reinterpret_cast<unsigned long long*>(sums + slot), static_cast<unsigned long long>(q));
  atomicAdd(counts + slot, 1);
}

template <typename scalar_t, typename T, typename index_t>
__global__ void mask_accumulate_kernel(const scalar_t* a1, const scalar_t* a2, const scalar_t* a3,
                                       const index_t* labels, Geometry g, const FuseStats<T>* stats,
                                       double scale, int64_t total, int64_t* sums, int* counts) {
  const int64_t HW = g.H * g.W;
  WALNET_GRID_STRIDE(i, total) {
    const int64_t n = i / HW, p = i % HW;
    const index_t lab = labels[i];
    if (!stats[n].ok || !pgm::valid_label(lab, HW)) continue;
    const T b = pgm::fused_value(a1 + n * HW, a2 + n * g.h2 * g.w2, a3 + n * g.h3 * g.w3, g, p / g.W,
                                 p % g.W, stats[n]);
    add_to_segment(sums, counts, n * HW + lab, pgm::quantise(static_cast<double>(b), scale));
  }
}

template <typename T, typename index_t>
__global__ void mask_write_kernel(const index_t* labels, const FuseStats<T>* stats, int64_t HW,
                                  const int64_t* sums, const int* counts, double scale, double threshold,
                                  int64_t total, uint8_t* out) {
  WALNET_GRID_STRIDE(i, total) {
    const int64_t n = i / HW;
    const index_t lab = labels[i];
    if (!stats[n].ok || !pgm::valid_label(lab, HW)) {
      out[i] = pgm::kIgnore;
      continue;
    }
    const int64_t slot = n * HW + lab;
    out[i] = pgm::binarise(pgm::segment_mean(sums[slot], counts[slot], scale), threshold);
  }
}

template <typename scalar_t>
__global__ void max_abs_kernel(const scalar_t* values, int64_t HW, double* max_abs) {
  const int64_t n = blockIdx.x;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < HW; i += kBlock)
    acc = pgm::max_abs_step(acc, static_cast<double>(values[n * HW + i]));
  acc = block_max_abs(acc);
  if (threadIdx.x == 0) max_abs[n] = acc;
}

template <typename scalar_t, typename index_t>
__global__ void mean_accumulate_kernel(const scalar_t* values, const index_t* labels, const double* max_abs,
                                       int64_t HW, int64_t total, int64_t* sums, int* counts) {
  WALNET_GRID_STRIDE(i, total) {
    const int64_t n = i / HW;
    const index_t lab = labels[i];
    if (!pgm::is_finite(max_abs[n]) || !pgm::valid_label(lab, HW)) continue;
    const double scale = pgm::fixed_point_scale(max_abs[n], HW);
    add_to_segment(sums, counts, n * HW + lab, pgm::quantise(static_cast<double>(values[i]), scale));
  }
}

template <typename scalar_t, typename index_t>
__global__ void mean_write_kernel(const index_t* labels, const double* max_abs, int64_t HW, const int64_t* sums,
                                  const int* counts, int64_t total, scalar_t* out) {
  WALNET_GRID_STRIDE(i, total) {
    const int64_t n = i / HW;
    const index_t lab = labels[i];
    if (!pgm::is_finite(max_abs[n]) || !pgm::valid_label(lab, HW)) {
      out[i] = static_cast<scalar_t>(NAN);
      continue;
    }
    const int64_t slot = n * HW + lab;
    out[i] = static_cast<scalar_t>(pgm::segment_mean(sums[slot], counts[slot], pgm::fixed_point_scale(max_abs[n], HW)));
  }
}

// Launches the statistics kernel into a byte buffer that holds one FuseStats<T> per sample.
template <typename scalar_t, typename T>
at::Tensor launch_fuse_stats(const at::Tensor& a1, const at::Tensor& a2, const at::Tensor& a3, const Geometry& g) {
  const int64_t N = a1.size(0);
  auto stats = at::empty({N * int64_t(sizeof(FuseStats<T>))}, a1.options().dtype(at::kByte));
  fuse_stats_kernel<scalar_t, T><<<N, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      a1.const_data_ptr<scalar_t>(), a2.const_data_ptr<scalar_t>(), a3.const_data_ptr<scalar_t>(), g,
      reinterpret_cast<FuseStats<T>*>(stats.mutable_data_ptr<uint8_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return stats;
}

at::Tensor fuse_attention_cuda(const at::Tensor& a1_, const at::Tensor& a2_, const at::Tensor& a3_) {
  check_attention(a1_, a2_, a3_);
  const c10::cuda::CUDAGuard guard(a1_.device());
  const auto a1 = a1_.contiguous(), a2 = a2_.contiguous(), a3 = a3_.contiguous();
  const Geometry g = geometry_of(a1, a2, a3);
  const int64_t N = a1.size(0), total = N * g.H * g.W;
  auto out = at::empty({N, g.H, g.W}, a1.options().dtype(pgm::opmath_dtype(a1.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a1.scalar_type(), "fuse_attention_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto stats = launch_fuse_stats<scalar_t, T>(a1, a2, a3, g);
    fuse_write_kernel<scalar_t, T><<<grid_for(total), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        a1.const_data_ptr<scalar_t>(), a2.const_data_ptr<scalar_t>(), a3.const_data_ptr<scalar_t>(), g,
        reinterpret_cast<const FuseStats<T>*>(stats.const_data_ptr<uint8_t>()), total, out.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor pseudo_mask_cuda(const at::Tensor& a1_, const at::Tensor& a2_, const at::Tensor& a3_,
                            const at::Tensor& labels_, double threshold) {
  check_attention(a1_, a2_, a3_);
  check_labels(labels_, a1_);
  const c10::cuda::CUDAGuard guard(a1_.device());
  const auto a1 = a1_.contiguous(), a2 = a2_.contiguous(), a3 = a3_.contiguous();
  const auto labels = labels_.contiguous();
  const Geometry g = geometry_of(a1, a2, a3);
  const int64_t N = a1.size(0), HW = g.H * g.W, total = N * HW;
  auto out = at::empty({N, g.H, g.W}, a1.options().dtype(at::kByte));
  auto sums = at::zeros({total}, a1.options().dtype(at::kLong));
  auto counts = at::zeros({total}, a1.options().dtype(at::kInt));
  const double scale = pgm::fixed_point_scale(1.0, HW);  // B lies in [0, 1]
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a1.scalar_type(), "pseudo_mask_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "pseudo_mask_cuda_labels", [&] {
      using T = at::opmath_type<scalar_t>;
      const auto stats = launch_fuse_stats<scalar_t, T>(a1, a2, a3, g);
      const auto* st = reinterpret_cast<const FuseStats<T>*>(stats.const_data_ptr<uint8_t>());
      mask_accumulate_kernel<scalar_t, T, index_t><<<grid_for(total), kBlock, 0, stream>>>(
          a1.const_data_ptr<scalar_t>(), a2.const_data_ptr<scalar_t>(), a3.const_data_ptr<scalar_t>(),
          labels.const_data_ptr<index_t>(), g, st, scale, total, sums.mutable_data_ptr<int64_t>(),
          counts.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      mask_write_kernel<T, index_t><<<grid_for(total), kBlock, 0, stream>>>(
          labels.const_data_ptr<index_t>(), st, HW, sums.const_data_ptr<int64_t>(), counts.const_data_ptr<int>(),
          scale, threshold, total, out.mutable_data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor superpixel_mean_cuda(const at::Tensor& values_, const at::Tensor& labels_) {
  check_map(values_, "values");
  check_labels(labels_, values_);
  const c10::cuda::CUDAGuard guard(values_.device());
  const auto values = values_.contiguous();
  const auto labels = labels_.contiguous();
  const int64_t N = values.size(0), HW = values.size(1) * values.size(2), total = N * HW;
  auto out = at::empty_like(values, at::MemoryFormat::Contiguous);
  auto sums = at::zeros({total}, values.options().dtype(at::kLong));
  auto counts = at::zeros({total}, values.options().dtype(at::kInt));
  auto max_abs = at::empty({N}, values.options().dtype(at::kDouble));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "superpixel_mean_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_mean_cuda_labels", [&] {
      max_abs_kernel<scalar_t><<<N, kBlock, 0, stream>>>(values.const_data_ptr<scalar_t>(), HW,
                                                         max_abs.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      mean_accumulate_kernel<scalar_t, index_t><<<grid_for(total), kBlock, 0, stream>>>(
          values.const_data_ptr<scalar_t>(), labels.const_data_ptr<index_t>(), max_abs.const_data_ptr<double>(),
          HW, total, sums.mutable_data_ptr<int64_t>(), counts.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      mean_write_kernel<scalar_t, index_t><<<grid_for(total), kBlock, 0, stream>>>(
          labels.const_data_ptr<index_t>(), max_abs.const_data_ptr<double>(), HW, sums.const_data_ptr<int64_t>(),
          counts.const_data_ptr<int>(), total, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CUDA, m) {
  m.impl("fuse_attention", &fuse_attention_cuda);
  m.impl("superpixel_mean", &superpixel_mean_cuda);
  m.impl("pseudo_mask", &pseudo_mask_cuda);
}

}  // namespace walnet

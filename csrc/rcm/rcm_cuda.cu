// CUDA kernels of the RCM ops: mask_boxes with one block per sample (integer min/max over the
// source map in shared memory), crop_resize with one thread per output element, and its backward with one thread per
// input element gathering the output pixels that read it (no atomics: deterministic). Then the
// one-pass ops over all levels, one launch each: roi_boxes (a block per sample, warp ballots),
// crop_levels and its backward (blocks over (level, sample, chunk) with shared index tables).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "../common/strides.h"
#include "../common/cuda_launch.cuh"
#include "rcm.h"

namespace walnet {
namespace {

using rcm::Box;

template <typename scalar_t>
__global__ void mask_boxes_kernel(const scalar_t* prob, int64_t h, int64_t w, int64_t H, int64_t W,
                                  scalar_t threshold, double r, int32_t* out) {
  __shared__ unsigned long long lo_y, lo_x;
  __shared__ long long hi_y, hi_x;
  if (threadIdx.x == 0) {
    lo_y = h, lo_x = w, hi_y = -1, hi_x = -1;
  }
  __syncthreads();
  const int64_t n = blockIdx.x;
  const scalar_t* p = prob + n * h * w;
  // The box is found on the h x w source map, over the rows and columns the resize reads.
  for (int64_t i = threadIdx.x; i < h * w; i += kBlock) {
    const int64_t r = i / w, c = i % w;
    if (rcm::is_read(r, h, H) && rcm::is_read(c, w, W) &&
        rcm::is_foreground<at::opmath_type<scalar_t>>(p, w, r, c, threshold)) {
      atomicMin(&lo_y, static_cast<unsigned long long>(r));
      atomicMin(&lo_x, static_cast<unsigned long long>(c));
      atomicMax(&hi_y, static_cast<long long>(r));
      atomicMax(&hi_x, static_cast<long long>(c));
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Box b{static_cast<int64_t>(lo_y), static_cast<int64_t>(lo_x), hi_y, hi_x};
    b = b.y2 < 0 ? Box{0, 0, H - 1, W - 1} : rcm::dilate(rcm::target_box(b, h, w, H, W), H, W, r);
    int32_t* o = out + 4 * n;
    o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
  }
}

template <typename scalar_t>
__global__ void crop_resize_kernel(const scalar_t* in, Strides4 is, const int32_t* boxes, int64_t C, int64_t H,
                                   int64_t W, int64_t OH, int64_t OW, bool bilinear, scalar_t* out, Strides4 os,
                                   int64_t total) {
  using T = at::opmath_type<scalar_t>;
  WALNET_GRID_STRIDE(i, total) {
    const int64_t ox = i % OW, oy = (i / OW) % OH, c = (i / (OW * OH)) % C, n = i / (OW * OH * C);
    const Box b = rcm::load_box(boxes, n, H, W);
    const Tap<T> ty = resize_tap<T>(oy, b.y2 - b.y1 + 1, OH, bilinear);
    const Tap<T> tx = resize_tap<T>(ox, b.x2 - b.x1 + 1, OW, bilinear);
    out[n * os.N + c * os.C + oy * os.H + ox * os.W] =
        static_cast<scalar_t>(rcm::crop_value<T>(in + n * is.N + c * is.C, is.H, is.W, b, ty, tx, bilinear));
  }
}

template <typename scalar_t>
__global__ void crop_resize_backward_kernel(const scalar_t* grad, Strides4 gs, const int32_t* boxes, int64_t C,
                                            int64_t H, int64_t W, int64_t OH, int64_t OW, bool bilinear,
                                            scalar_t* out, Strides4 os, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  WALNET_GRID_STRIDE(i, total) {
    const int64_t ix = i % W, iy = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    const Box b = rcm::load_box(boxes, n, H, W);
    T value = T(0);
    if (iy >= b.y1 && iy <= b.y2 && ix >= b.x1 && ix <= b.x2) {
      const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1, ry = iy - b.y1, rx = ix - b.x1;
      value = rcm::crop_grad<T>(grad + n * gs.N + c * gs.C, gs.H, gs.W, ch, cw, OH, OW, ry, rx,
                                readers_of<T>(ry, ch, OH, bilinear), readers_of<T>(rx, cw, OW, bilinear), bilinear);
    }
    out[n * os.N + c * os.C + iy * os.H + ix * os.W] = static_cast<scalar_t>(value);
  }
}

at::Tensor mask_boxes_cuda(const at::Tensor& prob_, int64_t H, int64_t W, double threshold, double dilation) {
  check_map(prob_, "prob");
  check_size(H, W, "mask_boxes", "target");
  check_dilation(dilation);
  const c10::cuda::CUDAGuard guard(prob_.device());
  const auto prob = prob_.contiguous();
  const int64_t N = prob.size(0);
  auto out = at::empty({N, 4}, prob.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "mask_boxes_cuda", [&] {
    mask_boxes_kernel<scalar_t><<<N, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        prob.const_data_ptr<scalar_t>(), prob.size(1), prob.size(2), H, W, static_cast<scalar_t>(threshold),
        static_cast<double>(W) * dilation, out.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// crop_resize_kernel and crop_resize_backward_kernel take the same arguments: `in` (the features,
// or the output's gradient), the boxes, C, the features' H x W, the output's OH x OW, and `out`
// (the output, or the features' gradient), one thread per element of `out`.
template <typename scalar_t, typename Kernel>
void launch_crop(Kernel kernel, const at::Tensor& in, const at::Tensor& boxes_, int64_t H, int64_t W, int64_t OH,
                 int64_t OW, bool bilinear, at::Tensor& out) {
  const int64_t total = out.numel();
  if (total == 0) return;
  const auto boxes = boxes_.contiguous();
  kernel<<<grid_for(total), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      in.const_data_ptr<scalar_t>(), strides_of(in), boxes.const_data_ptr<int32_t>(), in.size(1), H, W, OH, OW,
      bilinear, out.mutable_data_ptr<scalar_t>(), strides_of(out), total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor crop_resize_cuda(const at::Tensor& features, const at::Tensor& boxes, int64_t OH, int64_t OW,
                            bool bilinear) {
  check_crop(features, "features", boxes, OH, OW, "crop_resize", "output");
  const c10::cuda::CUDAGuard guard(features.device());
  auto out = rcm::crop_output(features, OH, OW);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "crop_resize_cuda", [&] {
    launch_crop<scalar_t>(crop_resize_kernel<scalar_t>, features, boxes, features.size(2), features.size(3), OH, OW,
                          bilinear, out);
  });
  return out;
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W,
                                     bool bilinear) {
  check_crop(grad, "grad", boxes, H, W, "crop_resize_backward", "input");
  const c10::cuda::CUDAGuard guard(grad.device());
  auto out = rcm::crop_output(grad, H, W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cuda", [&] {
    launch_crop<scalar_t>(crop_resize_backward_kernel<scalar_t>, grad, boxes, H, W, grad.size(2), grad.size(3),
                          bilinear, out);
  });
  return out;
}

// --- The one-pass ops over all levels (preview kernels: walnet/ops/_preview.py) --------------

constexpr int kWarps = kBlock / 32;
constexpr unsigned kAllLanes = 0xffffffffu;
// roi_boxes keeps the levels reading each source row and column in shared memory (a byte each)
// up to this many rows plus columns; a larger map recomputes them where they are needed.
constexpr int64_t kReadTableBytes = 32768;

// roi_boxes: one block per sample, every level at once, no atomics. The levels reading each
// source row and column are tabulated first. Rows: a warp per row (rows in increasing order per
// warp), lanes along it; a ballot per level tells whether any lane saw the row occupied at that
// level (rcm::occupied_levels). Columns: a thread per column, down the rows (reads coalesced
// along the row). Each warp's first/last rows and columns meet in shared memory; thread l turns
// level l's into its box (rcm::level_box).
template <typename scalar_t>
__global__ void roi_boxes_kernel(const scalar_t* prob, int64_t sN, int64_t sH, int64_t sW, int64_t h, int64_t w,
                                 const __grid_constant__ rcm::LevelSizes sizes, scalar_t threshold, double dilation,
                                 bool tabulated, int32_t* out) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ uint8_t read_by[];  // when tabulated: the row levels [h], then the column levels [w]
  __shared__ int32_t found[4][kMaxLevels][kWarps];  // y1, y2, x1, x2 per level and warp
  const int32_t L = sizes.L;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (tabulated) {
    for (int64_t i = threadIdx.x; i < h; i += kBlock) read_by[i] = rcm::read_levels(i, h, sizes.H, L);
    for (int64_t i = threadIdx.x; i < w; i += kBlock) read_by[h + i] = rcm::read_levels(i, w, sizes.W, L);
    __syncthreads();
  }
  const auto row_levels = [&](int64_t r) -> uint32_t {
    return tabulated ? read_by[r] : rcm::read_levels(r, h, sizes.H, L);
  };
  const auto col_levels = [&](int64_t c) -> uint32_t {
    return tabulated ? read_by[h + c] : rcm::read_levels(c, w, sizes.W, L);
  };
  const scalar_t* p = prob + blockIdx.x * sN;
  const auto foreground = [&](int64_t r, int64_t c) { return rcm::is_foreground<T>(p[r * sH + c * sW], threshold); };

  int32_t y1[kMaxLevels], y2[kMaxLevels], x1[kMaxLevels], x2[kMaxLevels];
  for (int l = 0; l < kMaxLevels; ++l) y1[l] = static_cast<int32_t>(h), y2[l] = -1, x1[l] = static_cast<int32_t>(w), x2[l] = -1;
  for (int64_t r = warp; r < h; r += kWarps) {  // the loop is uniform across the warp
    uint32_t crossing = 0;
    for (int64_t c = lane; c < w; c += 32)
      if (foreground(r, c)) crossing |= col_levels(c);
    const uint32_t occupied = rcm::occupied_levels(row_levels(r), crossing);
    for (int l = 0; l < kMaxLevels; ++l) {
      if (__ballot_sync(kAllLanes, (occupied >> l) & 1u) != 0) {
        y1[l] = min(y1[l], static_cast<int32_t>(r));
        y2[l] = static_cast<int32_t>(r);
      }
    }
  }
  for (int64_t c = threadIdx.x; c < w; c += kBlock) {
    uint32_t crossing = 0;
    for (int64_t r = 0; r < h; ++r)
      if (foreground(r, c)) crossing |= row_levels(r);
    const uint32_t occupied = rcm::occupied_levels(col_levels(c), crossing);
    for (int l = 0; l < kMaxLevels; ++l) {
      if ((occupied >> l) & 1u) {
        x1[l] = min(x1[l], static_cast<int32_t>(c));
        x2[l] = static_cast<int32_t>(c);
      }
    }
  }
  for (int l = 0; l < kMaxLevels; ++l) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      x1[l] = min(x1[l], __shfl_xor_sync(kAllLanes, x1[l], offset));
      x2[l] = max(x2[l], __shfl_xor_sync(kAllLanes, x2[l], offset));
    }
    if (lane == 0) found[0][l][warp] = y1[l], found[1][l][warp] = y2[l], found[2][l][warp] = x1[l], found[3][l][warp] = x2[l];
  }
  __syncthreads();
  if (threadIdx.x < L) {
    const int l = threadIdx.x;
    Box src{h, w, -1, -1};
    for (int k = 0; k < kWarps; ++k) {
      src.y1 = min(src.y1, static_cast<int64_t>(found[0][l][k]));
      src.y2 = max(src.y2, static_cast<int64_t>(found[1][l][k]));
      src.x1 = min(src.x1, static_cast<int64_t>(found[2][l][k]));
      src.x2 = max(src.x2, static_cast<int64_t>(found[3][l][k]));
    }
    const Box b = rcm::level_box(src, h, w, sizes.H[l], sizes.W[l], dilation);
    int32_t* o = out + 4 * (static_cast<int64_t>(blockIdx.x) * L + l);
    o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
  }
}

at::Tensor roi_boxes_cuda(const at::Tensor& prob, at::IntArrayRef heights, at::IntArrayRef widths, double threshold,
                          double dilation) {
  check_roi_boxes(prob, heights, widths);
  check_dilation(dilation, "roi_boxes");
  const c10::cuda::CUDAGuard guard(prob.device());
  const int64_t N = prob.size(0), h = prob.size(1), w = prob.size(2), L = static_cast<int64_t>(heights.size());
  rcm::LevelSizes sizes{};
  for (int64_t l = 0; l < L; ++l) sizes.H[l] = heights[l], sizes.W[l] = widths[l];
  sizes.L = static_cast<int32_t>(L);
  auto out = at::empty({N, L, 4}, prob.options().dtype(at::kInt));
  if (N == 0) return out;
  const bool tabulated = h + w <= kReadTableBytes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "roi_boxes_cuda", [&] {
    roi_boxes_kernel<scalar_t><<<N, kBlock, tabulated ? h + w : 0, at::cuda::getCurrentCUDAStream()>>>(
        prob.const_data_ptr<scalar_t>(), prob.stride(0), prob.stride(1), prob.stride(2), h, w, sizes,
        static_cast<scalar_t>(threshold), dilation, tabulated, out.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// One level of crop_levels (in: the features, out: the crop) or of its backward (in: the crop's
// gradient, out: the features' gradient), by value. Offsets inside a sample are 32-bit
// (check_levels); a stride of a size-1 dimension is 0, whatever the tensor says.
struct CropLevel {
  const void* in;
  void* out;
  int64_t in_n, out_n;                          // sample strides
  int32_t in_c, in_h, in_w, out_c, out_h, out_w;  // strides inside a sample
  int32_t C, H, W;
  int32_t chunks;        // blocks per sample
  int64_t first_block;   // the level's first block
  bool channels_last;    // threads along C (the output's unit stride), else along W
};

struct CropLevels {
  CropLevel level[kMaxLevels];
  int32_t L;
};

// Elements of one (level, sample) per block at most: the block's tables are built once for them.
constexpr int32_t kChunk = 8192;
// Shared-memory tables of int32 entries per block at most (32 KiB); a level whose tables do not
// fit computes its source indices (reader ranges) per element instead.
constexpr int64_t kTableEntries = 8192;

// The block's level (levels own consecutive runs of blocks; a level without elements owns none).
__device__ __forceinline__ int block_level(const CropLevels& a) {
  int l = 0;
  for (int k = 1; k < kMaxLevels; ++k)
    if (k < a.L && blockIdx.x >= a.level[k].first_block) l = k;
  return l;
}

// What one block of crop_levels or its backward works on: a chunk [begin, end) of the elements of
// one (level, sample), and that sample's box in the level (clamped into the map).
struct BlockChunk {
  int level;
  int64_t n;
  int32_t begin, end;
  Box box;
  int32_t ch, cw;  // the box's height and width
};

__device__ __forceinline__ BlockChunk block_chunk(const CropLevels& a, const int32_t* boxes) {
  BlockChunk w;
  w.level = block_level(a);
  const CropLevel& lv = a.level[w.level];
  const int64_t block = blockIdx.x - lv.first_block;
  w.n = block / lv.chunks;
  w.begin = static_cast<int32_t>(block % lv.chunks) * kChunk;
  const int32_t numel = lv.C * lv.H * lv.W;
  w.end = numel - w.begin < kChunk ? numel : w.begin + kChunk;
  w.box = rcm::load_box(boxes, w.n * a.L + w.level, lv.H, lv.W);
  w.ch = static_cast<int32_t>(w.box.y2 - w.box.y1 + 1);
  w.cw = static_cast<int32_t>(w.box.x2 - w.box.x1 + 1);
  return w;
}

// Element e of a chunk as (channel, row, column): channel fastest for channels_last, else column.
__device__ __forceinline__ void element_position(const CropLevel& lv, int32_t e, int32_t& c, int32_t& y, int32_t& x) {
  if (lv.channels_last) {
    c = e % lv.C;
    const int32_t p = e / lv.C;
    x = p % lv.W, y = p / lv.W;
  } else {
    x = e % lv.W;
    const int32_t p = e / lv.W;
    y = p % lv.H, c = p / lv.H;
  }
}

// crop_levels: a block covers a chunk of one (level, sample). It tabulates the source offset of
// every output row and column once in shared memory, then copies one element per thread and step
// (nearest: values are copied, so word_t is an unsigned integer of the dtype's size).
template <typename word_t>
__global__ void crop_levels_kernel(const __grid_constant__ CropLevels a, const int32_t* boxes, int64_t table_entries) {
  extern __shared__ int32_t table[];
  const BlockChunk w = block_chunk(a, boxes);
  const CropLevel& lv = a.level[w.level];
  const int64_t n = w.n;
  const int32_t y1 = static_cast<int32_t>(w.box.y1), x1 = static_cast<int32_t>(w.box.x1), ch = w.ch, cw = w.cw;
  const bool tabulated = lv.H + lv.W <= table_entries;  // uniform across the block
  int32_t* rows = table;
  int32_t* cols = table + lv.H;
  if (tabulated) {
    for (int32_t i = threadIdx.x; i < lv.H; i += blockDim.x)
      rows[i] = (y1 + static_cast<int32_t>(nearest_src(i, ch, lv.H))) * lv.in_h;
    for (int32_t i = threadIdx.x; i < lv.W; i += blockDim.x)
      cols[i] = (x1 + static_cast<int32_t>(nearest_src(i, cw, lv.W))) * lv.in_w;
    __syncthreads();
  }
  const word_t* in = static_cast<const word_t*>(lv.in) + n * lv.in_n;
  word_t* out = static_cast<word_t*>(lv.out) + n * lv.out_n;
  for (int32_t e = w.begin + threadIdx.x; e < w.end; e += blockDim.x) {
    int32_t c, oy, ox;
    element_position(lv, e, c, oy, ox);
    const int32_t src = tabulated ? rows[oy] + cols[ox]
                                  : (y1 + static_cast<int32_t>(nearest_src(oy, ch, lv.H))) * lv.in_h +
                                        (x1 + static_cast<int32_t>(nearest_src(ox, cw, lv.W))) * lv.in_w;
    out[c * lv.out_c + oy * lv.out_h + ox * lv.out_w] = in[c * lv.in_c + src];
  }
}

// crop_levels_backward: the same blocks over the features' gradient. The block inverts the reader
// tables of its box once in shared memory (rcm::invert_readers: no search); then one thread per
// input element sums the gradient of the outputs that read it (rcm::nearest_grad: rows, then
// columns, in increasing order), so no atomics and the bits of crop_resize_backward.
template <typename scalar_t>
__global__ void crop_levels_backward_kernel(const __grid_constant__ CropLevels a, const int32_t* boxes,
                                            int64_t table_entries) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ int32_t table[];
  const BlockChunk w = block_chunk(a, boxes);
  const CropLevel& lv = a.level[w.level];
  const int64_t n = w.n;
  const Box& b = w.box;
  const int32_t ch = w.ch, cw = w.cw;
  const bool tabulated = lv.H + lv.W + 2 <= table_entries;  // uniform across the block
  int32_t* rows = table;  // [ch + 1] of [H + 1]
  int32_t* cols = table + lv.H + 1;
  if (tabulated) {
    for (int32_t o = threadIdx.x; o < lv.H; o += blockDim.x) rcm::invert_readers(o, ch, lv.H, rows);
    for (int32_t o = threadIdx.x; o < lv.W; o += blockDim.x) rcm::invert_readers(o, cw, lv.W, cols);
    __syncthreads();
  }
  const scalar_t* grad = static_cast<const scalar_t*>(lv.in) + n * lv.in_n;
  scalar_t* out = static_cast<scalar_t*>(lv.out) + n * lv.out_n;
  for (int32_t e = w.begin + threadIdx.x; e < w.end; e += blockDim.x) {
    int32_t c, iy, ix;
    element_position(lv, e, c, iy, ix);
    T value = T(0);
    if (iy >= b.y1 && iy <= b.y2 && ix >= b.x1 && ix <= b.x2) {
      const int32_t ry = iy - static_cast<int32_t>(b.y1), rx = ix - static_cast<int32_t>(b.x1);
      const Range rr = tabulated ? rcm::reader_range(rows, ry) : readers_of<float>(ry, ch, lv.H, false);
      const Range rc = tabulated ? rcm::reader_range(cols, rx) : readers_of<float>(rx, cw, lv.W, false);
      value = rcm::nearest_grad<T, int32_t>(grad + c * lv.in_c, lv.in_h, lv.in_w, rr, rc);
    }
    out[c * lv.out_c + iy * lv.out_h + ix * lv.out_w] = static_cast<scalar_t>(value);
  }
}

// Same-size unsigned words: the forward copies values without converting them.
template <size_t kBytes>
struct Word;
template <>
struct Word<2> { using type = uint16_t; };
template <>
struct Word<4> { using type = uint32_t; };
template <>
struct Word<8> { using type = uint64_t; };

int32_t stride32(const at::Tensor& t, int64_t d) { return t.size(d) == 1 ? 0 : static_cast<int32_t>(t.stride(d)); }

// One launch over all levels: `in` are the kernel's inputs, `out` its (allocated) outputs, one
// per level, both of the levels' sizes; tables: the entries a level's tables need beyond H + W.
template <typename Kernel>
void launch_levels(Kernel kernel, at::TensorList in, std::vector<at::Tensor>& out, const at::Tensor& boxes,
                   int64_t extra_entries) {
  CropLevels a{};
  a.L = static_cast<int32_t>(in.size());
  const int64_t N = in[0].size(0);
  int64_t blocks = 0, entries = 0;
  for (int32_t l = 0; l < a.L; ++l) {
    const at::Tensor &i = in[l], &o = out[l];
    CropLevel& lv = a.level[l];
    lv.in = i.const_data_ptr(), lv.out = o.mutable_data_ptr();
    lv.in_n = i.stride(0), lv.out_n = o.stride(0);
    lv.in_c = stride32(i, 1), lv.in_h = stride32(i, 2), lv.in_w = stride32(i, 3);
    lv.out_c = stride32(o, 1), lv.out_h = stride32(o, 2), lv.out_w = stride32(o, 3);
    lv.C = static_cast<int32_t>(i.size(1)), lv.H = static_cast<int32_t>(i.size(2)), lv.W = static_cast<int32_t>(i.size(3));
    const int64_t numel = i.size(1) * i.size(2) * i.size(3);
    lv.chunks = static_cast<int32_t>((numel + kChunk - 1) / kChunk);
    lv.first_block = blocks;
    lv.channels_last = o.stride(1) == 1 && lv.C > 1;
    blocks += N * lv.chunks;
    if (numel > 0) entries = std::max(entries, i.size(2) + i.size(3) + extra_entries);
  }
  if (blocks == 0) return;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "crop_levels: too many elements for one launch (", blocks, " blocks)");
  entries = std::min(entries, kTableEntries);
  kernel<<<static_cast<unsigned>(blocks), kBlock, entries * sizeof(int32_t), at::cuda::getCurrentCUDAStream()>>>(
      a, boxes.const_data_ptr<int32_t>(), entries);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> crop_levels_cuda(at::TensorList features, const at::Tensor& boxes_) {
  check_levels(features, "features", boxes_, "crop_levels");
  const c10::cuda::CUDAGuard guard(features[0].device());
  const auto boxes = boxes_.contiguous();
  std::vector<at::Tensor> out;
  for (const at::Tensor& f : features) out.push_back(rcm::crop_output(f, f.size(2), f.size(3)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features[0].scalar_type(), "crop_levels_cuda", [&] {
    using word_t = typename Word<sizeof(scalar_t)>::type;
    launch_levels(crop_levels_kernel<word_t>, features, out, boxes, 0);
  });
  return out;
}

std::vector<at::Tensor> crop_levels_backward_cuda(at::TensorList grads, const at::Tensor& boxes_) {
  check_levels(grads, "grads", boxes_, "crop_levels_backward");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const auto boxes = boxes_.contiguous();
  std::vector<at::Tensor> out;
  for (const at::Tensor& g : grads) out.push_back(rcm::crop_output(g, g.size(2), g.size(3)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "crop_levels_backward_cuda", [&] {
    launch_levels(crop_levels_backward_kernel<scalar_t>, grads, out, boxes, 2);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CUDA, m) {
  m.impl("mask_boxes", &mask_boxes_cuda);
  m.impl("crop_resize", &crop_resize_cuda);
  m.impl("crop_resize_backward", &crop_resize_backward_cuda);
  m.impl("roi_boxes", &roi_boxes_cuda);
  m.impl("crop_levels", &crop_levels_cuda);
  m.impl("crop_levels_backward", &crop_levels_backward_cuda);
}

}  // namespace walnet

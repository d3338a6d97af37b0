// Per-element logic of the RCM ops (docs/design.md §5), shared by the CPU and CUDA backends:
// the dilated box of a mask, and the crop-resize gather and its transpose (the backward, also a
// gather: every source pixel sums the output pixels that read it, in a fixed order); for the
// one-pass ops over all levels, the levels reading a source row or column and the reader tables
// inverted from the monotone nearest index. The host-side helper at the end makes the result
// tensor the crop entry points return.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "../common/checks.h"
#include "../common/macros.h"
#include "../common/resize.h"

namespace walnet {
namespace rcm {

struct Box {
  int64_t y1, x1, y2, x2;
};

// int(v) clamped into [lo, hi], clamping first: v may be far outside int64 (a huge dilation), and
// int() of a value in (-1, 0) is 0 anyway, so clamping before truncating gives the same result.
WALNET_HD int64_t trunc_clamped(double v, int64_t lo, int64_t hi) {
  v = v < static_cast<double>(lo) ? static_cast<double>(lo) : v;
  v = v > static_cast<double>(hi) ? static_cast<double>(hi) : v;
  return static_cast<int64_t>(v);
}

// Tight box -> dilated box, as the authors' Python: y1' = max(int(y1 - r), 0),
// y2' = min(int(y2 + r), H - 1); int() truncates toward zero, like the cast.
WALNET_HD Box dilate(const Box& b, int64_t H, int64_t W, double r) {
  return {trunc_clamped(static_cast<double>(b.y1) - r, 0, H - 1), trunc_clamped(static_cast<double>(b.x1) - r, 0, W - 1),
          trunc_clamped(static_cast<double>(b.y2) + r, 0, H - 1), trunc_clamped(static_cast<double>(b.x2) + r, 0, W - 1)};
}

// Whether the nearest resize from `in` to `out` reads source index `src` (a shrink skips some).
WALNET_HD bool is_read(int64_t src, int64_t in, int64_t out) {
  return first_dst_from<float>(src, in, out, false) < first_dst_from<float>(src + 1, in, out, false);
}

// The target-space tight box of the resized mask from its source-space box (rows y1..y2, columns
// x1..x2, each read by the resize): the nearest source index is non-decreasing in the target
// index, so the box runs from the first target row reading y1 to the last one reading y2. This
// costs O(log H) instead of a pass over the H x W target.
WALNET_HD Box target_box(const Box& src, int64_t h, int64_t w, int64_t H, int64_t W) {
  return {first_dst_from<float>(src.y1, h, H, false), first_dst_from<float>(src.x1, w, W, false),
          first_dst_from<float>(src.y2 + 1, h, H, false) - 1, first_dst_from<float>(src.x2 + 1, w, W, false) - 1};
}

// Reads box n of an int32 [N,4] tensor, clamped into an H x W map so that a direct op call with
// a bad box cannot read out of bounds (the Python wrapper rejects such boxes first).
WALNET_HD Box load_box(const int32_t* boxes, int64_t n, int64_t H, int64_t W) {
  const int32_t* b = boxes + 4 * n;
  Box box{b[0], b[1], b[2], b[3]};
  box.y1 = box.y1 < 0 ? 0 : (box.y1 > H - 1 ? H - 1 : box.y1);
  box.x1 = box.x1 < 0 ? 0 : (box.x1 > W - 1 ? W - 1 : box.x1);
  box.y2 = box.y2 < box.y1 ? box.y1 : (box.y2 > H - 1 ? H - 1 : box.y2);
  box.x2 = box.x2 < box.x1 ? box.x1 : (box.x2 > W - 1 ? W - 1 : box.x2);
  return box;
}

// Foreground test of a probability: the value compared with the threshold rounded to its dtype
// (as PyTorch's `prob >= threshold` does), in the math type T, which holds both exactly.
template <typename T, typename scalar_t>
WALNET_HD bool is_foreground(scalar_t value, scalar_t threshold) {
  return static_cast<T>(value) >= static_cast<T>(threshold);
}

// The same for source pixel (r, c) of a contiguous h x w map. A target pixel is foreground when
// the source pixel it reads is.
template <typename T, typename scalar_t>
WALNET_HD bool is_foreground(const scalar_t* prob, int64_t w, int64_t r, int64_t c, scalar_t threshold) {
  return is_foreground<T>(prob[r * w + c], threshold);
}

// One output value of the crop-resize of a plane (strides sH, sW) with box b, given the row and
// column taps of the output pixel (resize_tap over the crop's height and width).
template <typename T, typename scalar_t>
WALNET_HD T crop_value(const scalar_t* plane, int64_t sH, int64_t sW, const Box& b, const Tap<T>& ty,
                       const Tap<T>& tx, bool bilinear) {
  const scalar_t* p0 = plane + (b.y1 + ty.i0) * sH + b.x1 * sW;
  if (!bilinear) return static_cast<T>(p0[tx.i0 * sW]);
  const scalar_t* p1 = plane + (b.y1 + ty.i1) * sH + b.x1 * sW;
  // The reference's order: wy0 * (wx0 * f00 + wx1 * f01) + wy1 * (wx0 * f10 + wx1 * f11).
  return ty.w0 * (tx.w0 * static_cast<T>(p0[tx.i0 * sW]) + tx.w1 * static_cast<T>(p0[tx.i1 * sW])) +
         ty.w1 * (tx.w0 * static_cast<T>(p1[tx.i0 * sW]) + tx.w1 * static_cast<T>(p1[tx.i1 * sW]));
}

// Gradient of one input pixel at crop-relative (ry, rx) of a plane of the output gradient
// (strides gH, gW): the sum, over the output pixels that read it (rows x cols, from readers_of),
// of weight * grad, rows then columns in increasing order (deterministic, no atomics).
template <typename T, typename scalar_t>
WALNET_HD T crop_grad(const scalar_t* grad, int64_t gH, int64_t gW, int64_t ch, int64_t cw, int64_t OH,
                      int64_t OW, int64_t ry, int64_t rx, const Range& rows, const Range& cols, bool bilinear) {
  T acc = T(0);
  for (int64_t oy = rows.begin; oy < rows.end; ++oy) {
    const T wy = bilinear ? tap_weight(resize_tap<T>(oy, ch, OH, true), ry) : T(1);
    if (wy == T(0)) continue;
    T row = T(0);
    for (int64_t ox = cols.begin; ox < cols.end; ++ox) {
      const T wx = bilinear ? tap_weight(resize_tap<T>(ox, cw, OW, true), rx) : T(1);
      if (wx != T(0)) row += wx * static_cast<T>(grad[oy * gH + ox * gW]);
    }
    acc += wy * row;
  }
  return acc;
}

// --- The one-pass ops over all levels: roi_boxes, crop_levels and its backward --------------

// Sizes of up to kMaxLevels levels, passed by value to the CUDA kernel of roi_boxes.
struct LevelSizes {
  int64_t H[kMaxLevels], W[kMaxLevels];
  int32_t L;
};

// The levels whose nearest resize from `in` to sizes[l] reads source index `src`: bit l. The
// resized mask of level l is the source mask restricted to the rows and columns it reads.
WALNET_HD uint32_t read_levels(int64_t src, int64_t in, const int64_t* sizes, int32_t L) {
  uint32_t bits = 0;
  for (int32_t l = 0; l < kMaxLevels; ++l)
    if (l < L && is_read(src, in, sizes[l])) bits |= 1u << l;
  return bits;
}

// roi_boxes finds every level's box on the source map in one sweep. Source row r holds foreground
// of level l when r is read by level l and one of its foreground pixels sits in a column read by
// level l: bit l of `own & crossing`, where `own` = read_levels of the row and `crossing` is the
// OR of read_levels over the columns of the row's foreground pixels. Columns alike, with rows.
// (A row's foreground in columns that a level skips must not count for that level.)
WALNET_HD uint32_t occupied_levels(uint32_t own, uint32_t crossing) { return own & crossing; }

// The box of one level (target size H x W) from the first and last source row (y1, y2) and column
// (x1, x2) holding its foreground, y2 < 0 when there is none: as mask_boxes, the dilated
// target-space box, or the full map.
WALNET_HD Box level_box(const Box& src, int64_t h, int64_t w, int64_t H, int64_t W, double dilation) {
  if (src.y2 < 0 || src.x2 < 0) return Box{0, 0, H - 1, W - 1};
  return dilate(target_box(src, h, w, H, W), H, W, static_cast<double>(W) * dilation);
}

// One entry of the reader table of the nearest resize from `in` to `out`, by inverting the source
// index instead of searching it: begin[s] (s in [0, in]) is the first output index whose source is
// >= s, begin[in] = out, so the outputs that read source s are [begin[s], begin[s + 1]), the range
// readers_of(s) finds by binary search. The source index is non-decreasing in the output index,
// so output `o` is the first reader of every source in (src(o - 1), src(o)], and the last output
// also closes the table (sources past its own, skipped by a shrink, have no readers). Calling this
// for every o in [0, out) writes each entry once: a CUDA block fills a table without races.
WALNET_HD void invert_readers(int64_t o, int64_t in, int64_t out, int32_t* begin) {
  const int64_t s = nearest_src(o, in, out);
  for (int64_t k = o == 0 ? 0 : nearest_src(o - 1, in, out) + 1; k <= s; ++k) begin[k] = static_cast<int32_t>(o);
  if (o == out - 1)
    for (int64_t k = s + 1; k <= in; ++k) begin[k] = static_cast<int32_t>(out);
}

// The readers of source s from a table filled by invert_readers.
WALNET_HD Range reader_range(const int32_t* begin, int64_t s) { return {begin[s], begin[s + 1]}; }

// Gradient of one input pixel of a nearest crop-resize whose readers are rows x cols of the output
// gradient (offsets oy * gH + ox * gW, in index_t): rcm::crop_grad's sum with weights 1, in its
// order (rows, then columns, increasing), so the same bits; 32-bit offsets where sizes allow.
template <typename T, typename index_t, typename scalar_t>
WALNET_HD T nearest_grad(const scalar_t* grad, index_t gH, index_t gW, const Range& rows, const Range& cols) {
  T acc = T(0);
  for (index_t oy = static_cast<index_t>(rows.begin); oy < static_cast<index_t>(rows.end); ++oy) {
    T row = T(0);
    for (index_t ox = static_cast<index_t>(cols.begin); ox < static_cast<index_t>(cols.end); ++ox)
      row += static_cast<T>(grad[oy * gH + ox * gW]);
    acc += row;
  }
  return acc;
}

// --- Host side, shared by the CPU and CUDA entry points -------------------------------------

// The result of crop_resize (t: the features, H x W: the output size) or of its backward (t: the
// output's gradient, H x W: the input size): t's batch and channels, in t's memory format, so
// that channels_last stays channels_last.
inline at::Tensor crop_output(const at::Tensor& t, int64_t H, int64_t W) {
  return at::empty({t.size(0), t.size(1), H, W}, t.options().memory_format(t.suggest_memory_format()));
}

}  // namespace rcm
}  // namespace walnet

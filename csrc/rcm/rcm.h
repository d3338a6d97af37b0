// Per-element logic of the RCM ops (docs/design.md §5), shared by the CPU and CUDA backends:
// the dilated box of a mask, and the crop-resize gather and its transpose (the backward, also a
// gather: every source pixel sums the output pixels that read it, in a fixed order). The
// host-side helper at the end makes the result tensor both entry points return.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

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

// Foreground test of source pixel (r, c) of the probability map: the value compared with the
// threshold rounded to its dtype (as PyTorch's `prob >= threshold` does), in the math type T,
// which holds both exactly. A target pixel is foreground when the source pixel it reads is.
template <typename T, typename scalar_t>
WALNET_HD bool is_foreground(const scalar_t* prob, int64_t w, int64_t r, int64_t c, scalar_t threshold) {
  return static_cast<T>(prob[r * w + c]) >= static_cast<T>(threshold);
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

// --- Host side, shared by the CPU and CUDA entry points -------------------------------------

// The result of crop_resize (t: the features, H x W: the output size) or of its backward (t: the
// output's gradient, H x W: the input size): t's batch and channels, in t's memory format, so
// that channels_last stays channels_last.
inline at::Tensor crop_output(const at::Tensor& t, int64_t H, int64_t W) {
  return at::empty({t.size(0), t.size(1), H, W}, t.options().memory_format(t.suggest_memory_format()));
}

}  // namespace rcm
}  // namespace walnet

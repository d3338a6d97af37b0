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

// Tight box -> dilated box, as the authors' Python: y1' = max(int(y1 - r), 0),
// y2' = min(int(y2 + r), H - 1); int() truncates toward zero, like the cast.
WALNET_HD Box dilate(const Box& b, int64_t H, int64_t W, double r) {
  Box d;
  d.y1 = static_cast<int64_t>(static_cast<double>(b.y1) - r);
  d.x1 = static_cast<int64_t>(static_cast<double>(b.x1) - r);
  d.y2 = static_cast<int64_t>(static_cast<double>(b.y2) + r);
  d.x2 = static_cast<int64_t>(static_cast<double>(b.x2) + r);
  d.y1 = d.y1 > 0 ? d.y1 : 0;
  d.x1 = d.x1 > 0 ? d.x1 : 0;
  d.y2 = d.y2 < H - 1 ? d.y2 : H - 1;
  d.x2 = d.x2 < W - 1 ? d.x2 : W - 1;
  return d;
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

// Foreground test of the mask at target pixel (y, x): the probability map is nearest-resized
// from h x w to H x W and compared with the threshold rounded to its dtype (as PyTorch's
// `prob >= threshold` does), in the math type T, which holds both exactly.
template <typename T, typename scalar_t>
WALNET_HD bool is_foreground(const scalar_t* prob, int64_t h, int64_t w, int64_t H, int64_t W, int64_t y,
                             int64_t x, scalar_t threshold) {
  return static_cast<T>(prob[nearest_src(y, h, H) * w + nearest_src(x, w, W)]) >= static_cast<T>(threshold);
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

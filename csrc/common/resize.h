// Source indices of PyTorch's resize modes, shared by every op that resamples.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace walnet {

// Source row/column of PyTorch's legacy "nearest" resize (F.interpolate(mode="nearest") with an
// explicit size): floor(dst * (in / out)) evaluated in float32, clamped to the last index.
WALNET_HD int64_t nearest_src(int64_t dst, int64_t in, int64_t out) {
  if (in == out) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const int64_t src = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return src < in - 1 ? src : in - 1;
}

// The two source taps of one output index and their weights: F.interpolate(mode="bilinear",
// align_corners=False) along one axis, in the op's math type T. Nearest is w0 = 1, i1 = i0.
template <typename T>
struct Tap {
  int64_t i0, i1;
  T w0, w1;
};

template <typename T>
WALNET_HD Tap<T> resize_tap(int64_t dst, int64_t in, int64_t out, bool bilinear) {
  if (!bilinear) {
    const int64_t s = nearest_src(dst, in, out);
    return {s, s, T(1), T(0)};
  }
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  T real = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  real = real < T(0) ? T(0) : real;
  int64_t i0 = static_cast<int64_t>(real);
  i0 = i0 < in - 1 ? i0 : in - 1;
  const int64_t i1 = i0 < in - 1 ? i0 + 1 : i0;
  const T l1 = real - static_cast<T>(i0);
  return {i0, i1, T(1) - l1, l1};
}

// Weight with which output index `dst`'s tap reads source `src` (0 if it does not).
template <typename T>
WALNET_HD T tap_weight(const Tap<T>& t, int64_t src) {
  return (t.i0 == src ? t.w0 : T(0)) + (t.i1 == src ? t.w1 : T(0));
}

// First output index whose tap i0 is >= target (out if none). i0 is non-decreasing in dst
// (float rounding is monotonic), so a binary search finds it.
template <typename T>
WALNET_HD int64_t first_dst_from(int64_t target, int64_t in, int64_t out, bool bilinear) {
  int64_t lo = 0, hi = out;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (resize_tap<T>(mid, in, out, bilinear).i0 < target)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Output indices [begin, end) whose taps may read source `src`: nearest reads only i0; a
// bilinear tap reads i0 and i0 + 1.
struct Range {
  int64_t begin, end;
};

template <typename T>
WALNET_HD Range readers_of(int64_t src, int64_t in, int64_t out, bool bilinear) {
  return {first_dst_from<T>(bilinear ? src - 1 : src, in, out, bilinear),
          first_dst_from<T>(src + 1, in, out, bilinear)};
}

}  // namespace walnet

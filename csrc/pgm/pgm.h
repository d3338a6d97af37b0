// Per-element logic of the PGM ops (docs/design.md §4), shared by the CPU and CUDA backends.
//
// Everything that decides a value lives here as WALNET_HD inline functions, so the CPU build
// runs the very arithmetic the GPU runs and the CPU tests cover both. The arithmetic order
// follows walnet/ops/reference.py exactly (normalise each map, multiply left to right,
// normalise the product), which makes fuse_attention bitwise equal to the reference. The
// host-side helpers at the end read the shapes and dtypes both entry points need.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "../common/macros.h"
#include "../common/resize.h"

namespace walnet {
namespace pgm {

constexpr uint8_t kIgnore = 255;  // pseudo-mask value skipped by CrossEntropyLoss(ignore_index=255)

// Finite test that needs no <cmath> overloads on the device: inf - inf and NaN - NaN are NaN.
template <typename T>
WALNET_HD bool is_finite(T v) {
  return (v - v) == T(0);
}

// Running min/max of one map; any non-finite value poisons it (the sample is then degenerate).
// (A plain aggregate, so the CUDA backend can keep it in __shared__ memory.)
template <typename T>
struct MinMax {
  T lo, hi;
  bool finite;

  static WALNET_HD MinMax empty() {
    return {std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity(), true};
  }
  WALNET_HD void add(T v) {
    if (!is_finite(v)) {
      finite = false;
      return;
    }
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  WALNET_HD void merge(const MinMax& o) {
    lo = o.lo < lo ? o.lo : lo;
    hi = o.hi > hi ? o.hi : hi;
    finite = finite && o.finite;
  }
  // A map carries information when it is finite and not constant (max - min > 0 and finite).
  WALNET_HD bool informative() const {
    const T span = hi - lo;
    return finite && span > T(0) && is_finite(span);
  }
};

// Per-sample constants of the fused map: min and span of each input map and of their product.
template <typename T>
struct FuseStats {
  T lo[3];
  T span[3];
  T plo;
  T pspan;
  bool ok;  // false: the fused map carries no information (-> B = 0, pseudo mask = 255)
};

// Shapes of one sample: a1 is H x W; a2, a3 are coarser maps upsampled on the fly.
struct Geometry {
  int64_t H, W, h2, w2, h3, w3;
};

template <typename T>
WALNET_HD T normalise(T v, T lo, T span) {
  return (v - lo) / span;
}

// Eq. 1's product, left to right as the reference multiplies.
template <typename T>
WALNET_HD T product(T v1, T v2, T v3) {
  return v1 * v2 * v3;
}

// Product of the three normalised maps at pixel (y, x) of the a1 grid.
template <typename T, typename In>
WALNET_HD T fused_product(const In* a1, const In* a2, const In* a3, const Geometry& g, int64_t y,
                          int64_t x, const T* lo, const T* span) {
  const int64_t y2 = nearest_src(y, g.h2, g.H), x2 = nearest_src(x, g.w2, g.W);
  const int64_t y3 = nearest_src(y, g.h3, g.H), x3 = nearest_src(x, g.w3, g.W);
  const T v1 = normalise(static_cast<T>(a1[y * g.W + x]), lo[0], span[0]);
  const T v2 = normalise(static_cast<T>(a2[y2 * g.w2 + x2]), lo[1], span[1]);
  const T v3 = normalise(static_cast<T>(a3[y3 * g.w3 + x3]), lo[2], span[2]);
  return product(v1, v2, v3);
}

// B of Eq. 1 at one pixel (0 for a degenerate sample).
template <typename T, typename In>
WALNET_HD T fused_value(const In* a1, const In* a2, const In* a3, const Geometry& g, int64_t y,
                        int64_t x, const FuseStats<T>& s) {
  if (!s.ok) return T(0);
  return normalise(fused_product(a1, a2, a3, g, y, x, s.lo, s.span), s.plo, s.pspan);
}

// --- Deterministic per-segment sums -------------------------------------------------------
// Segment sums are accumulated as 64-bit fixed point: integer addition is associative, so the
// CUDA atomics give the same bits in any order and the CPU loop gives the same bits as well.
// Values are scaled by 2^bits / max|v| with bits chosen so that n_pixels * 2^bits < 2^62:
// a sum over a whole sample cannot overflow, and the step (max|v| * 2^-bits, at most
// 2^-37 * max|v| for 16M-pixel samples) is far below float32 resolution.

// max |v| so far; a non-finite v turns it into +inf, so the sample is flagged, not skipped.
WALNET_HD double max_abs_step(double acc, double v) {
  const double a = v < 0.0 ? -v : v;
  if (!is_finite(a)) return std::numeric_limits<double>::infinity();
  return a > acc ? a : acc;
}

WALNET_HD int fixed_point_bits(int64_t n_pixels) {
  int b = 0;
  while ((int64_t(1) << b) <= n_pixels) ++b;
  return 62 - b;
}

// Multiplier taking values of magnitude <= max_abs to fixed point (max_abs finite, >= 0).
WALNET_HD double fixed_point_scale(double max_abs, int64_t n_pixels) {
  const double one = static_cast<double>(int64_t(1) << fixed_point_bits(n_pixels));
  return max_abs > 0.0 ? one / max_abs : 1.0;
}

WALNET_HD int64_t quantise(double v, double scale) {
  const double q = v * scale;
  return static_cast<int64_t>(q >= 0.0 ? q + 0.5 : q - 0.5);
}

WALNET_HD double segment_mean(int64_t sum, int64_t count, double scale) {
  return static_cast<double>(sum) / static_cast<double>(count) / scale;
}

template <typename index_t>
WALNET_HD bool valid_label(index_t label, int64_t n_pixels) {
  return label >= 0 && static_cast<int64_t>(label) < n_pixels;
}

// Eq. 2 + binarisation: segment mean >= threshold -> 1.
WALNET_HD uint8_t binarise(double mean, double threshold) {
  return mean >= threshold ? uint8_t(1) : uint8_t(0);
}

// --- Host side: what the CPU and CUDA entry points read off their tensors ------------------

// The geometry of a batch of attention maps that check_attention accepted.
inline Geometry geometry_of(const at::Tensor& a1, const at::Tensor& a2, const at::Tensor& a3) {
  return {a1.size(1), a1.size(2), a2.size(1), a2.size(2), a3.size(1), a3.size(2)};
}

// dtype of the fused map: the math type of the maps (float64 for float64, else float32).
inline at::ScalarType opmath_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace pgm
}  // namespace walnet

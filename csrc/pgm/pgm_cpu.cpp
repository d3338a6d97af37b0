// CPU kernels of the PGM ops: one sample per task of at::parallel_for, each a serial loop over
// the per-element logic of pgm.h (so results do not depend on the thread count).
//
// Per sample, the coarse maps are normalised once and read through nearest-index tables, and
// the product of the three maps is kept in a per-thread scratch row block, so each pixel is
// computed once; the upsampled maps themselves are never formed.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/checks.h"
#include "pgm.h"

namespace walnet {
namespace {

using pgm::FuseStats;
using pgm::Geometry;
using pgm::geometry_of;
using pgm::MinMax;

// Per-thread buffers for one sample of a given geometry.
template <typename T>
struct FuseScratch {
  std::vector<T> n2, n3, prod;          // normalised a2, a3; product on the a1 grid
  std::vector<T> row2, row3;            // the current row of a2, a3 upsampled to W
  std::vector<int64_t> x2, x3, y2, y3;  // nearest source column / row in a2, a3

  explicit FuseScratch(const Geometry& g)
      : n2(g.h2 * g.w2), n3(g.h3 * g.w3), prod(g.H * g.W), row2(g.W), row3(g.W), x2(g.W), x3(g.W), y2(g.H), y3(g.H) {
    for (int64_t x = 0; x < g.W; ++x) {
      x2[x] = nearest_src(x, g.w2, g.W);
      x3[x] = nearest_src(x, g.w3, g.W);
    }
    for (int64_t y = 0; y < g.H; ++y) {
      y2[y] = nearest_src(y, g.h2, g.H);
      y3[y] = nearest_src(y, g.h3, g.H);
    }
  }
};

// Same result as folding MinMax::add over v (min and max are exact, so order does not matter),
// written with independent lanes that the compiler turns into SIMD: the sum of (v - v) is 0
// exactly when every value is finite.
template <typename T, typename In>
MinMax<T> minmax_of(const In* v, int64_t n) {
  constexpr int kLanes = 8;
  T lo[kLanes], hi[kLanes], bad[kLanes];
  for (int k = 0; k < kLanes; ++k) {
    lo[k] = std::numeric_limits<T>::infinity();
    hi[k] = -std::numeric_limits<T>::infinity();
    bad[k] = T(0);
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const T x = static_cast<T>(v[i + k]);
      lo[k] = x < lo[k] ? x : lo[k];
      hi[k] = x > hi[k] ? x : hi[k];
      bad[k] += x - x;
    }
  }
  for (; i < n; ++i) {
    const T x = static_cast<T>(v[i]);
    lo[0] = x < lo[0] ? x : lo[0];
    hi[0] = x > hi[0] ? x : hi[0];
    bad[0] += x - x;
  }
  auto mm = MinMax<T>::empty();
  for (int k = 0; k < kLanes; ++k) {
    mm.lo = lo[k] < mm.lo ? lo[k] : mm.lo;
    mm.hi = hi[k] > mm.hi ? hi[k] : mm.hi;
    mm.finite = mm.finite && bad[k] == T(0);
  }
  return mm;
}

// Statistics of one sample, leaving the product of the normalised maps in s.prod.
template <typename T, typename In>
FuseStats<T> fuse_sample(const In* a1, const In* a2, const In* a3, const Geometry& g, FuseScratch<T>& s) {
  FuseStats<T> st{};
  const MinMax<T> mm[3] = {minmax_of<T>(a1, g.H * g.W), minmax_of<T>(a2, g.h2 * g.w2), minmax_of<T>(a3, g.h3 * g.w3)};
  st.ok = mm[0].informative() && mm[1].informative() && mm[2].informative();
  if (!st.ok) return st;
  for (int m = 0; m < 3; ++m) {
    st.lo[m] = mm[m].lo;
    st.span[m] = mm[m].hi - mm[m].lo;
  }
  for (int64_t i = 0; i < g.h2 * g.w2; ++i) s.n2[i] = pgm::normalise(static_cast<T>(a2[i]), st.lo[1], st.span[1]);
  for (int64_t i = 0; i < g.h3 * g.w3; ++i) s.n3[i] = pgm::normalise(static_cast<T>(a3[i]), st.lo[2], st.span[2]);
  const T lo1 = st.lo[0], span1 = st.span[0];
  T* row2 = s.row2.data();
  T* row3 = s.row3.data();
  for (int64_t y = 0; y < g.H; ++y) {
    if (y == 0 || s.y2[y] != s.y2[y - 1])
      for (int64_t x = 0; x < g.W; ++x) row2[x] = s.n2[s.y2[y] * g.w2 + s.x2[x]];
    if (y == 0 || s.y3[y] != s.y3[y - 1])
      for (int64_t x = 0; x < g.W; ++x) row3[x] = s.n3[s.y3[y] * g.w3 + s.x3[x]];
    const In* r1 = a1 + y * g.W;
    T* p = s.prod.data() + y * g.W;
    for (int64_t x = 0; x < g.W; ++x)
      p[x] = pgm::product(pgm::normalise(static_cast<T>(r1[x]), lo1, span1), row2[x], row3[x]);
  }
  const MinMax<T> prod = minmax_of<T>(s.prod.data(), g.H * g.W);
  st.ok = prod.informative();
  st.plo = prod.lo;
  st.pspan = prod.hi - prod.lo;
  return st;
}

at::Tensor fuse_attention_cpu(const at::Tensor& a1_, const at::Tensor& a2_, const at::Tensor& a3_) {
  check_attention(a1_, a2_, a3_);
  const auto a1 = a1_.contiguous(), a2 = a2_.contiguous(), a3 = a3_.contiguous();
  const Geometry g = geometry_of(a1, a2, a3);
  const int64_t N = a1.size(0), HW = g.H * g.W;
  auto out = at::empty({N, g.H, g.W}, a1.options().dtype(pgm::opmath_dtype(a1.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a1.scalar_type(), "fuse_attention_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *p1 = a1.const_data_ptr<scalar_t>(), *p2 = a2.const_data_ptr<scalar_t>(),
                   *p3 = a3.const_data_ptr<scalar_t>();
    T* po = out.mutable_data_ptr<T>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      FuseScratch<T> scratch(g);
      for (int64_t n = begin; n < end; ++n) {
        const auto st = fuse_sample<T>(p1 + n * HW, p2 + n * g.h2 * g.w2, p3 + n * g.h3 * g.w3, g, scratch);
        T* o = po + n * HW;
        for (int64_t i = 0; i < HW; ++i) o[i] = st.ok ? pgm::normalise(scratch.prod[i], st.plo, st.pspan) : T(0);
      }
    });
  });
  return out;
}

// Per-thread segment accumulators. Only slots [0, used) are ever dirty, and they are cleared
// after each sample, so compact labels (as Felzenszwalb gives) cost O(segments), not O(H*W).
// Runs of equal labels (superpixels are contiguous along rows) are summed in registers first:
// integer sums are associative, so the bits are those of a pixel-by-pixel sum.
struct SegmentSums {
  std::vector<int64_t> sums, counts;
  int64_t used = 0;

  explicit SegmentSums(int64_t n_pixels) : sums(n_pixels, 0), counts(n_pixels, 0) {}

  // Adds q[i] to the segment labels[i] for every i in [0, n) whose label is valid.
  template <typename index_t>
  void add_all(const index_t* labels, const int64_t* q, int64_t n) {
    int64_t i = 0;
    while (i < n) {
      const index_t lab = labels[i];
      int64_t sum = 0, j = i;
      for (; j < n && labels[j] == lab; ++j) sum += q[j];
      if (pgm::valid_label(lab, n)) {
        sums[lab] += sum;
        counts[lab] += j - i;
        used = std::max(used, static_cast<int64_t>(lab) + 1);
      }
      i = j;
    }
  }
  void clear() {
    std::fill_n(sums.begin(), used, 0);
    std::fill_n(counts.begin(), used, 0);
    used = 0;
  }
};

at::Tensor superpixel_mean_cpu(const at::Tensor& values_, const at::Tensor& labels_) {
  check_map(values_, "values");
  check_labels(labels_, values_);
  const auto values = values_.contiguous();
  const auto labels = labels_.contiguous();
  const int64_t N = values.size(0), HW = values.size(1) * values.size(2);
  auto out = at::empty_like(values, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "superpixel_mean_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_mean_cpu_labels", [&] {
      const scalar_t* pv = values.const_data_ptr<scalar_t>();
      const index_t* pl = labels.const_data_ptr<index_t>();
      scalar_t* po = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        SegmentSums seg(HW);
        std::vector<int64_t> q(HW);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* v = pv + n * HW;
          const index_t* l = pl + n * HW;
          scalar_t* o = po + n * HW;
          double max_abs = 0.0;
          for (int64_t i = 0; i < HW; ++i) max_abs = pgm::max_abs_step(max_abs, static_cast<double>(v[i]));
          if (!pgm::is_finite(max_abs)) {  // only reachable with value checks turned off
            std::fill_n(o, HW, std::numeric_limits<scalar_t>::quiet_NaN());
            continue;
          }
          const double scale = pgm::fixed_point_scale(max_abs, HW);
          for (int64_t i = 0; i < HW; ++i) q[i] = pgm::quantise(static_cast<double>(v[i]), scale);
          seg.add_all(l, q.data(), HW);
          for (int64_t i = 0; i < HW; ++i)
            o[i] = pgm::valid_label(l[i], HW)
                       ? static_cast<scalar_t>(pgm::segment_mean(seg.sums[l[i]], seg.counts[l[i]], scale))
                       : std::numeric_limits<scalar_t>::quiet_NaN();
          seg.clear();
        }
      });
    });
  });
  return out;
}

at::Tensor pseudo_mask_cpu(const at::Tensor& a1_, const at::Tensor& a2_, const at::Tensor& a3_,
                           const at::Tensor& labels_, double threshold) {
  check_attention(a1_, a2_, a3_);
  check_labels(labels_, a1_);
  const auto a1 = a1_.contiguous(), a2 = a2_.contiguous(), a3 = a3_.contiguous();
  const auto labels = labels_.contiguous();
  const Geometry g = geometry_of(a1, a2, a3);
  const int64_t N = a1.size(0), HW = g.H * g.W;
  auto out = at::empty({N, g.H, g.W}, a1.options().dtype(at::kByte));
  uint8_t* po = out.mutable_data_ptr<uint8_t>();
  const double scale = pgm::fixed_point_scale(1.0, HW);  // B lies in [0, 1]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a1.scalar_type(), "pseudo_mask_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "pseudo_mask_cpu_labels", [&] {
      using T = at::opmath_type<scalar_t>;
      const scalar_t *p1 = a1.const_data_ptr<scalar_t>(), *p2 = a2.const_data_ptr<scalar_t>(),
                     *p3 = a3.const_data_ptr<scalar_t>();
      const index_t* pl = labels.const_data_ptr<index_t>();
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        FuseScratch<T> scratch(g);
        SegmentSums seg(HW);
        std::vector<int64_t> q(HW);
        std::vector<uint8_t> seg_mask(HW);
        for (int64_t n = begin; n < end; ++n) {
          const index_t* l = pl + n * HW;
          uint8_t* o = po + n * HW;
          const auto st = fuse_sample<T>(p1 + n * HW, p2 + n * g.h2 * g.w2, p3 + n * g.h3 * g.w3, g, scratch);
          if (!st.ok) {
            std::fill_n(o, HW, pgm::kIgnore);
            continue;
          }
          T* b = scratch.prod.data();  // B overwrites the product (a vectorised pass)
          for (int64_t i = 0; i < HW; ++i) b[i] = pgm::normalise(b[i], st.plo, st.pspan);
          for (int64_t i = 0; i < HW; ++i) q[i] = pgm::quantise(static_cast<double>(b[i]), scale);
          seg.add_all(l, q.data(), HW);
          for (int64_t s = 0; s < seg.used; ++s)
            if (seg.counts[s]) seg_mask[s] = pgm::binarise(pgm::segment_mean(seg.sums[s], seg.counts[s], scale), threshold);
          for (int64_t i = 0; i < HW; ++i) o[i] = pgm::valid_label(l[i], HW) ? seg_mask[l[i]] : pgm::kIgnore;
          seg.clear();
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CPU, m) {
  m.impl("fuse_attention", &fuse_attention_cpu);
  m.impl("superpixel_mean", &superpixel_mean_cpu);
  m.impl("pseudo_mask", &pseudo_mask_cpu);
}

}  // namespace walnet

// CPU kernels of the PGM ops: one sample per task of at::parallel_for, each a serial loop over
// the per-element logic of pgm.h (so results do not depend on the thread count).
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
using pgm::MinMax;

Geometry geometry_of(const at::Tensor& a1, const at::Tensor& a2, const at::Tensor& a3) {
  return {a1.size(1), a1.size(2), a2.size(1), a2.size(2), a3.size(1), a3.size(2)};
}

template <typename T, typename In>
FuseStats<T> sample_stats(const In* a1, const In* a2, const In* a3, const Geometry& g) {
  FuseStats<T> s{};
  const In* maps[3] = {a1, a2, a3};
  const int64_t sizes[3] = {g.H * g.W, g.h2 * g.w2, g.h3 * g.w3};
  s.ok = true;
  for (int m = 0; m < 3; ++m) {
    auto mm = MinMax<T>::empty();
    for (int64_t i = 0; i < sizes[m]; ++i) mm.add(static_cast<T>(maps[m][i]));
    s.ok = s.ok && mm.informative();
    s.lo[m] = mm.lo;
    s.span[m] = mm.hi - mm.lo;
  }
  if (!s.ok) return s;
  auto prod = MinMax<T>::empty();
  for (int64_t y = 0; y < g.H; ++y)
    for (int64_t x = 0; x < g.W; ++x)
      prod.add(pgm::fused_product(a1, a2, a3, g, y, x, s.lo, s.span));
  s.ok = prod.informative();
  s.plo = prod.lo;
  s.pspan = prod.hi - prod.lo;
  return s;
}

at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor fuse_attention_cpu(const at::Tensor& a1_, const at::Tensor& a2_, const at::Tensor& a3_) {
  check_attention(a1_, a2_, a3_);
  const auto a1 = a1_.contiguous(), a2 = a2_.contiguous(), a3 = a3_.contiguous();
  const Geometry g = geometry_of(a1, a2, a3);
  const int64_t N = a1.size(0);
  auto out = at::empty({N, g.H, g.W}, a1.options().dtype(opmath_dtype(a1.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a1.scalar_type(), "fuse_attention_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *p1 = a1.const_data_ptr<scalar_t>(), *p2 = a2.const_data_ptr<scalar_t>(),
                   *p3 = a3.const_data_ptr<scalar_t>();
    T* po = out.mutable_data_ptr<T>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t *s1 = p1 + n * g.H * g.W, *s2 = p2 + n * g.h2 * g.w2, *s3 = p3 + n * g.h3 * g.w3;
        const auto st = sample_stats<T>(s1, s2, s3, g);
        T* o = po + n * g.H * g.W;
        for (int64_t y = 0; y < g.H; ++y)
          for (int64_t x = 0; x < g.W; ++x) o[y * g.W + x] = pgm::fused_value(s1, s2, s3, g, y, x, st);
      }
    });
  });
  return out;
}

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
        std::vector<int64_t> sums(HW);
        std::vector<int64_t> counts(HW);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t* v = pv + n * HW;
          const index_t* l = pl + n * HW;
          scalar_t* o = po + n * HW;
          double max_abs = 0.0;
          for (int64_t i = 0; i < HW; ++i) max_abs = pgm::max_abs_step(max_abs, static_cast<double>(v[i]));
          if (!pgm::is_finite(max_abs)) {  // only reachable with value checks turned off
            for (int64_t i = 0; i < HW; ++i) o[i] = std::numeric_limits<scalar_t>::quiet_NaN();
            continue;
          }
          const double scale = pgm::fixed_point_scale(max_abs, HW);
          std::fill(sums.begin(), sums.end(), 0);
          std::fill(counts.begin(), counts.end(), 0);
          for (int64_t i = 0; i < HW; ++i) {
            if (!pgm::valid_label(l[i], HW)) continue;
            sums[l[i]] += pgm::quantise(static_cast<double>(v[i]), scale);
            counts[l[i]] += 1;
          }
          for (int64_t i = 0; i < HW; ++i)
            o[i] = pgm::valid_label(l[i], HW)
                       ? static_cast<scalar_t>(pgm::segment_mean(sums[l[i]], counts[l[i]], scale))
                       : std::numeric_limits<scalar_t>::quiet_NaN();
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
        std::vector<int64_t> sums(HW);
        std::vector<int64_t> counts(HW);
        for (int64_t n = begin; n < end; ++n) {
          const scalar_t *s1 = p1 + n * HW, *s2 = p2 + n * g.h2 * g.w2, *s3 = p3 + n * g.h3 * g.w3;
          const index_t* l = pl + n * HW;
          uint8_t* o = po + n * HW;
          const auto st = sample_stats<T>(s1, s2, s3, g);
          if (!st.ok) {
            std::fill(o, o + HW, pgm::kIgnore);
            continue;
          }
          std::fill(sums.begin(), sums.end(), 0);
          std::fill(counts.begin(), counts.end(), 0);
          for (int64_t y = 0; y < g.H; ++y) {
            for (int64_t x = 0; x < g.W; ++x) {
              const index_t lab = l[y * g.W + x];
              if (!pgm::valid_label(lab, HW)) continue;
              const T b = pgm::fused_value(s1, s2, s3, g, y, x, st);
              sums[lab] += pgm::quantise(static_cast<double>(b), scale);
              counts[lab] += 1;
            }
          }
          for (int64_t i = 0; i < HW; ++i)
            o[i] = pgm::valid_label(l[i], HW)
                       ? pgm::binarise(pgm::segment_mean(sums[l[i]], counts[l[i]], scale), threshold)
                       : pgm::kIgnore;
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

// CPU kernel of crop_resize_backward, a gather like the CUDA kernel (no atomics): every source
// pixel sums the output pixels that read it, in rcm::crop_grad's order, so the bits equal the
// CUDA kernel's. Runs of (sample, channel) planes per task. Nearest (also crop_levels_backward's
// per level) streams over the gradient's rows with the readers of every source row and column
// tabulated once per sample from the inverted reader tables of rcm.h; bilinear
// tabulates each source index's reader range and gathers per pixel. Strided access, so
// contiguous and channels_last tensors need no copy.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/checks.h"
#include "../common/strides.h"
#include "rcm.h"
#include "rcm_cpu.h"

namespace walnet {
namespace {

using rcm::Box;

// The output indices reading each source index of a nearest resize from `in` to `out`: the
// first (clamped to a valid index when there is none) and how many (consecutive ones), from the
// inverted reader table of rcm.h (the CUDA kernel of crop_levels_backward builds the same).
struct Readers {
  std::vector<int32_t> begin, first, count;
  int32_t most = 0;  // the largest count

  void tabulate(int64_t in, int64_t out) {
    begin.resize(in + 1);
    for (int64_t o = 0; o < out; ++o) rcm::invert_readers(o, in, out, begin.data());
    first.resize(in);
    count.resize(in);
    for (int64_t s = 0; s < in; ++s) {
      const Range r = rcm::reader_range(begin.data(), s);
      first[s] = static_cast<int32_t>(std::min<int64_t>(r.begin, out - 1));
      count[s] = static_cast<int32_t>(r.end - r.begin);
    }
    most = *std::max_element(count.begin(), count.end());
  }
};

// acc[rx] = 0 + s (first row of a source row's readers) or acc[rx] + s (the next ones), s being
// the row sum 0 + g[ox_first] + g[ox_first + 1] + ... of source column rx. Every column sums a
// fixed kMost (or `most`) terms, the ones past its count being +0: s is never -0 (it starts
// from +0), so s + 0 == s bitwise, and the loop has no data-dependent branch.
template <bool kFirst, int kMost, typename T, typename scalar_t>
void nearest_row_grad(const scalar_t* grow, int64_t gW, const Readers& cols, int64_t cw, T* acc) {
  const int32_t* first = cols.first.data();
  const int32_t* count = cols.count.data();
  const int32_t most = kMost > 0 ? kMost : cols.most;
  for (int64_t rx = 0; rx < cw; ++rx) {
    const scalar_t* gp = grow + first[rx] * gW;
    const int32_t k = count[rx];
    T s = T(0) + (k > 0 ? static_cast<T>(gp[0]) : T(0));
    for (int32_t j = 1; j < most; ++j) s += j < k ? static_cast<T>(gp[j * gW]) : T(0);
    acc[rx] = kFirst ? T(0) + s : acc[rx] + s;
  }
}

// Nearest backward of planes [begin, end) (plane = n * C + c) as a stream over the gradient's
// rows, with the summation order of rcm::crop_grad: every source pixel gets 0 + rowsum(oy_first)
// + rowsum(oy_first + 1) + ..., each row sum being 0 + g[ox_first] + g[ox_first + 1] + ... in
// increasing ox. Same bits as the gather (and the CUDA kernel), at the cost of one pass over the
// gradient. The readers of every source row and column are tabulated once per sample.
template <typename T, typename scalar_t>
void nearest_planes_grad(const scalar_t* pg, const Strides4& gs, scalar_t* po, const Strides4& os, const int32_t* pb,
                         int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t begin, int64_t end) {
  Readers rows, cols;
  // float and double sum straight into a unit-stride output row; half and bfloat16 in T.
  constexpr bool kInPlace = std::is_same_v<T, scalar_t>;
  std::vector<T> buffer(W);
  for (int64_t plane = begin; plane < end;) {
    const int64_t n = plane / C, c0 = plane % C, c1 = std::min(C, c0 + (end - plane));
    plane += c1 - c0;
    const Box b = rcm::load_box(pb, n, H, W);
    const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1;
    rows.tabulate(ch, OH);
    cols.tabulate(cw, OW);
    // The column count as a compile-time constant where it is small (crops of at least a
    // quarter of the output), so that the inner loop unrolls.
    const auto row_grad = [&](auto first, const scalar_t* grow, T* acc) {
      constexpr bool kFirst = decltype(first)::value;
      if (cw == OW && gs.W == 1) {  // every column read once, in place: vectorisable
        for (int64_t rx = 0; rx < cw; ++rx) {
          const T s = T(0) + static_cast<T>(grow[rx]);
          acc[rx] = kFirst ? T(0) + s : acc[rx] + s;
        }
        return;
      }
      switch (cols.most) {
        case 1: return nearest_row_grad<kFirst, 1>(grow, gs.W, cols, cw, acc);
        case 2: return nearest_row_grad<kFirst, 2>(grow, gs.W, cols, cw, acc);
        case 3: return nearest_row_grad<kFirst, 3>(grow, gs.W, cols, cw, acc);
        case 4: return nearest_row_grad<kFirst, 4>(grow, gs.W, cols, cw, acc);
        default: return nearest_row_grad<kFirst, 0>(grow, gs.W, cols, cw, acc);
      }
    };
    for (int64_t c = c0; c < c1; ++c) {
      const scalar_t* g = pg + n * gs.N + c * gs.C;
      scalar_t* o = po + n * os.N + c * os.C;
      const auto zero = [&](scalar_t* p, int64_t count) {
        for (int64_t i = 0; i < count; ++i) p[i * os.W] = scalar_t(0);
      };
      for (int64_t iy = 0; iy < b.y1; ++iy) zero(o + iy * os.H, W);
      for (int64_t iy = b.y2 + 1; iy < H; ++iy) zero(o + iy * os.H, W);
      for (int64_t ry = 0; ry < ch; ++ry) {
        scalar_t* orow = o + (b.y1 + ry) * os.H;
        zero(orow, b.x1);
        zero(orow + (b.x2 + 1) * os.W, W - b.x2 - 1);
        T* acc = buffer.data();
        if constexpr (kInPlace) {
          if (os.W == 1) acc = orow + b.x1;
        }
        const int64_t oy0 = rows.first[ry], oy1 = oy0 + rows.count[ry];
        if (oy0 == oy1) {
          std::fill_n(acc, cw, T(0));
        } else {
          row_grad(std::true_type{}, g + oy0 * gs.H, acc);
          for (int64_t oy = oy0 + 1; oy < oy1; ++oy) row_grad(std::false_type{}, g + oy * gs.H, acc);
        }
        if (acc == buffer.data())
          for (int64_t rx = 0; rx < cw; ++rx) orow[(b.x1 + rx) * os.W] = static_cast<scalar_t>(acc[rx]);
      }
    }
  }
}

}  // namespace

void rcm::crop_nearest_backward_into(const at::Tensor& grad, const int32_t* pb, at::Tensor& out) {
  const int64_t N = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  const int64_t H = out.size(2), W = out.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const Strides4 gs = strides_of(grad), os = strides_of(out);
    at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
      nearest_planes_grad<T>(pg, gs, po, os, pb, C, H, W, OH, OW, begin, end);
    });
  });
}

at::Tensor rcm::crop_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes_, int64_t H, int64_t W,
                                         bool bilinear) {
  check_crop(grad, "grad", boxes_, H, W, "crop_resize_backward", "input");
  const auto boxes = boxes_.contiguous();
  const int64_t N = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  auto out = rcm::crop_output(grad, H, W);
  const int32_t* pb = boxes.const_data_ptr<int32_t>();
  if (!bilinear) {
    rcm::crop_nearest_backward_into(grad, pb, out);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const Strides4 gs = strides_of(grad), os = strides_of(out);
    const int64_t gsH = gs.H, gsW = gs.W, osH = os.H, osW = os.W;
    at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
      std::vector<Range> rows(H), cols(W);
      int64_t tabulated = -1;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const Box b = rcm::load_box(pb, n, H, W);
        const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1;
        if (n != tabulated) {
          for (int64_t ry = 0; ry < ch; ++ry) rows[ry] = readers_of<T>(ry, ch, OH, true);
          for (int64_t rx = 0; rx < cw; ++rx) cols[rx] = readers_of<T>(rx, cw, OW, true);
          tabulated = n;
        }
        const scalar_t* g = pg + n * gs.N + c * gs.C;
        scalar_t* o = po + n * os.N + c * os.C;
        for (int64_t iy = 0; iy < H; ++iy) {
          scalar_t* orow = o + iy * osH;
          const bool row_inside = iy >= b.y1 && iy <= b.y2;
          for (int64_t ix = 0; ix < W; ++ix) {
            if (!row_inside || ix < b.x1 || ix > b.x2) {
              orow[ix * osW] = scalar_t(0);
              continue;
            }
            const int64_t ry = iy - b.y1, rx = ix - b.x1;
            orow[ix * osW] = static_cast<scalar_t>(
                rcm::crop_grad<T>(g, gsH, gsW, ch, cw, OH, OW, ry, rx, rows[ry], cols[rx], true));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace walnet

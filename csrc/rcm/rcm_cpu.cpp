// CPU kernels of the RCM ops. mask_boxes: one sample per task; crop_resize and its backward:
// one (sample, channel) plane per task, with the row/column taps (or, backward, the ranges of
// output pixels reading each source row/column) tabulated once per plane. Strided access, so
// contiguous and channels_last tensors need no copy.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../common/checks.h"
#include "rcm.h"

namespace walnet {
namespace {

using rcm::Box;

at::Tensor mask_boxes_cpu(const at::Tensor& prob_, int64_t H, int64_t W, double threshold, double dilation) {
  check_map(prob_, "prob");
  TORCH_CHECK(H > 0 && W > 0, "mask_boxes: the target size must be positive, got ", H, "x", W);
  const auto prob = prob_.contiguous();
  const int64_t N = prob.size(0), h = prob.size(1), w = prob.size(2);
  auto out = at::empty({N, 4}, prob.options().dtype(at::kInt));
  int32_t* po = out.mutable_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "mask_boxes_cpu", [&] {
    const scalar_t* pp = prob.const_data_ptr<scalar_t>();
    const auto thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        Box b{H, W, -1, -1};
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x)
            if (rcm::is_foreground<at::opmath_type<scalar_t>>(pp + n * h * w, h, w, H, W, y, x, thr)) {
              b = {std::min(b.y1, y), std::min(b.x1, x), std::max(b.y2, y), std::max(b.x2, x)};
            }
        b = b.y2 < 0 ? Box{0, 0, H - 1, W - 1} : rcm::dilate(b, H, W, static_cast<double>(W) * dilation);
        int32_t* o = po + 4 * n;
        o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
      }
    });
  });
  return out;
}

at::Tensor crop_resize_cpu(const at::Tensor& features, const at::Tensor& boxes_, int64_t OH, int64_t OW,
                           bool bilinear) {
  check_features(features, "features");
  check_boxes(boxes_, features);
  TORCH_CHECK(OH > 0 && OW > 0, "crop_resize: the output size must be positive, got ", OH, "x", OW);
  const auto boxes = boxes_.contiguous();
  const int64_t N = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  auto out = at::empty({N, C, OH, OW}, features.options().memory_format(features.suggest_memory_format()));
  const int32_t* pb = boxes.const_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "crop_resize_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pf = features.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    // Strides as locals: the compiler cannot prove that writes through `po` leave them unchanged.
    const int64_t isN = features.stride(0), isC = features.stride(1), isH = features.stride(2), isW = features.stride(3);
    const int64_t osN = out.stride(0), osC = out.stride(1), osH = out.stride(2), osW = out.stride(3);
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<Tap<T>> ty(OH), tx(OW);
      std::vector<int64_t> cols(OW);  // nearest: source column of each output column
      int64_t tabulated = -1;         // the sample whose taps are in ty / tx
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const Box b = rcm::load_box(pb, n, H, W);
        if (n != tabulated) {
          for (int64_t oy = 0; oy < OH; ++oy) ty[oy] = resize_tap<T>(oy, b.y2 - b.y1 + 1, OH, bilinear);
          for (int64_t ox = 0; ox < OW; ++ox) tx[ox] = resize_tap<T>(ox, b.x2 - b.x1 + 1, OW, bilinear);
          for (int64_t ox = 0; ox < OW; ++ox) cols[ox] = tx[ox].i0;
          tabulated = n;
        }
        const scalar_t* in = pf + n * isN + c * isC;
        scalar_t* o = po + n * osN + c * osC;
        if (!bilinear && isW == 1 && osW == 1) {
          // Nearest on rows of unit stride: a plain gather per source row, and a copy of the
          // previous output row where upsampling repeats a source row (same values as crop_value).
          for (int64_t oy = 0; oy < OH; ++oy) {
            scalar_t* orow = o + oy * osH;
            if (oy > 0 && ty[oy].i0 == ty[oy - 1].i0) {
              std::copy_n(orow - osH, OW, orow);
              continue;
            }
            const scalar_t* irow = in + (b.y1 + ty[oy].i0) * isH + b.x1;
            for (int64_t ox = 0; ox < OW; ++ox) orow[ox] = irow[cols[ox]];
          }
          continue;
        }
        for (int64_t oy = 0; oy < OH; ++oy) {
          scalar_t* orow = o + oy * osH;
          for (int64_t ox = 0; ox < OW; ++ox)
            orow[ox * osW] = static_cast<scalar_t>(rcm::crop_value<T>(in, isH, isW, b, ty[oy], tx[ox], bilinear));
        }
      }
    });
  });
  return out;
}

// Nearest backward of one plane as a stream over the output rows, with the summation order of
// rcm::crop_grad: every source pixel gets 0 + rowsum(oy_first) + rowsum(oy_first + 1) + ...,
// each row sum being 0 + g[ox_first] + g[ox_first + 1] + ... in increasing ox. Same bits as the
// gather (and the CUDA kernel), at the cost of one pass over the gradient.
template <typename T, typename scalar_t>
void nearest_plane_grad(const scalar_t* g, int64_t gH, int64_t gW, const Box& b, int64_t OH, int64_t OW,
                        const std::vector<Tap<T>>& ty, const std::vector<Tap<T>>& tx, std::vector<T>& row_sums,
                        std::vector<T>& acc, scalar_t* o, int64_t oH, int64_t oW, int64_t H, int64_t W) {
  const int64_t cw = b.x2 - b.x1 + 1;
  for (int64_t iy = 0; iy < H; ++iy)
    for (int64_t ix = 0; ix < W; ++ix) o[iy * oH + ix * oW] = scalar_t(0);
  int64_t oy = 0;
  while (oy < OH) {
    const int64_t ry = ty[oy].i0;
    std::fill_n(acc.begin(), cw, T(0));  // the running sum of source row ry
    for (; oy < OH && ty[oy].i0 == ry; ++oy) {
      std::fill_n(row_sums.begin(), cw, T(0));
      const scalar_t* grow = g + oy * gH;
      for (int64_t ox = 0; ox < OW; ++ox) row_sums[tx[ox].i0] += static_cast<T>(grow[ox * gW]);
      for (int64_t rx = 0; rx < cw; ++rx) acc[rx] += row_sums[rx];
    }
    scalar_t* orow = o + (b.y1 + ry) * oH + b.x1 * oW;
    for (int64_t rx = 0; rx < cw; ++rx) orow[rx * oW] = static_cast<scalar_t>(acc[rx]);
  }
}

at::Tensor crop_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes_, int64_t H, int64_t W,
                                    bool bilinear) {
  check_features(grad, "grad");
  check_boxes(boxes_, grad);
  TORCH_CHECK(H > 0 && W > 0, "crop_resize_backward: the input size must be positive, got ", H, "x", W);
  const auto boxes = boxes_.contiguous();
  const int64_t N = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  auto out = at::empty({N, C, H, W}, grad.options().memory_format(grad.suggest_memory_format()));
  const int32_t* pb = boxes.const_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const int64_t gsN = grad.stride(0), gsC = grad.stride(1), gsH = grad.stride(2), gsW = grad.stride(3);
    const int64_t osN = out.stride(0), osC = out.stride(1), osH = out.stride(2), osW = out.stride(3);
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<Range> rows(H), cols(W);
      std::vector<Tap<T>> ty(OH), tx(OW);
      std::vector<T> row_sums(W), acc(W);
      int64_t tabulated = -1;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const Box b = rcm::load_box(pb, n, H, W);
        const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1;
        if (n != tabulated) {
          for (int64_t ry = 0; ry < ch; ++ry) rows[ry] = readers_of<T>(ry, ch, OH, bilinear);
          for (int64_t rx = 0; rx < cw; ++rx) cols[rx] = readers_of<T>(rx, cw, OW, bilinear);
          for (int64_t oy = 0; oy < OH; ++oy) ty[oy] = resize_tap<T>(oy, ch, OH, false);
          for (int64_t ox = 0; ox < OW; ++ox) tx[ox] = resize_tap<T>(ox, cw, OW, false);
          tabulated = n;
        }
        const scalar_t* g = pg + n * gsN + c * gsC;
        scalar_t* o = po + n * osN + c * osC;
        // The mode as a compile-time constant, so the nearest loop carries no weight arithmetic.
        const auto plane_grad = [&](auto mode) {
          constexpr bool kBilinear = decltype(mode)::value;
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
                  rcm::crop_grad<T>(g, gsH, gsW, ch, cw, OH, OW, ry, rx, rows[ry], cols[rx], kBilinear));
            }
          }
        };
        if (bilinear)
          plane_grad(std::true_type{});
        else
          nearest_plane_grad(g, gsH, gsW, b, OH, OW, ty, tx, row_sums, acc, o, osH, osW, H, W);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CPU, m) {
  m.impl("mask_boxes", &mask_boxes_cpu);
  m.impl("crop_resize", &crop_resize_cpu);
  m.impl("crop_resize_backward", &crop_resize_backward_cpu);
}

}  // namespace walnet

// CPU kernels of mask_boxes (one sample per task) and of crop_resize's generic path: bilinear,
// and nearest on tensors whose strides have no fast path (rcm_nearest_cpu.cpp). Runs of
// (sample, channel) planes per task, with the row/column taps tabulated once per sample, and
// strided access, so contiguous and channels_last tensors need no copy. The entry points of the
// RCM ops and their CPU registration (the backward in rcm_backward_cpu.cpp) are here.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "../common/strides.h"
#include "rcm.h"
#include "rcm_cpu.h"

namespace walnet {
namespace {

using rcm::Box;
using rcm::plane_grain;

at::Tensor mask_boxes_cpu(const at::Tensor& prob_, int64_t H, int64_t W, double threshold, double dilation) {
  check_map(prob_, "prob");
  check_size(H, W, "mask_boxes", "target");
  check_dilation(dilation);
  const auto prob = prob_.contiguous();
  const int64_t N = prob.size(0), h = prob.size(1), w = prob.size(2);
  auto out = at::empty({N, 4}, prob.options().dtype(at::kInt));
  int32_t* po = out.mutable_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "mask_boxes_cpu", [&] {
    const scalar_t* pp = prob.const_data_ptr<scalar_t>();
    const auto thr = static_cast<scalar_t>(threshold);
    // The source rows / columns the resize to H x W reads: the box is found on the h x w map.
    std::vector<uint8_t> row_read(h), col_read(w);
    for (int64_t r = 0; r < h; ++r) row_read[r] = rcm::is_read(r, h, H);
    for (int64_t c = 0; c < w; ++c) col_read[c] = rcm::is_read(c, w, W);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        Box b{h, w, -1, -1};  // in source coordinates
        for (int64_t r = 0; r < h; ++r) {
          if (!row_read[r]) continue;
          for (int64_t c = 0; c < w; ++c)
            if (col_read[c] && rcm::is_foreground<at::opmath_type<scalar_t>>(pp + n * h * w, w, r, c, thr)) {
              b = {std::min(b.y1, r), std::min(b.x1, c), std::max(b.y2, r), std::max(b.x2, c)};
            }
        }
        b = b.y2 < 0 ? Box{0, 0, H - 1, W - 1}
                     : rcm::dilate(rcm::target_box(b, h, w, H, W), H, W, static_cast<double>(W) * dilation);
        int32_t* o = po + 4 * n;
        o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
      }
    });
  });
  return out;
}

at::Tensor crop_resize_cpu(const at::Tensor& features, const at::Tensor& boxes_, int64_t OH, int64_t OW,
                           bool bilinear) {
  check_crop(features, "features", boxes_, OH, OW, "crop_resize", "output");
  const auto boxes = boxes_.contiguous();
  auto out = rcm::crop_output(features, OH, OW);
  rcm::crop_resize_into(features, boxes.const_data_ptr<int32_t>(), out, bilinear);
  return out;
}

}  // namespace

void rcm::crop_resize_into(const at::Tensor& features, const int32_t* pb, at::Tensor& out, bool bilinear) {
  if (out.numel() == 0) return;
  const int64_t N = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t OH = out.size(2), OW = out.size(3);
  if (!bilinear && rcm::crop_nearest_cpu(features, pb, out)) return;
  // The generic path: bilinear, or nearest on strides that have no fast path.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "crop_resize_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pf = features.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const Strides4 is = strides_of(features), os = strides_of(out);
    // Strides as locals: the compiler cannot prove that writes through `po` leave them unchanged.
    const int64_t isH = is.H, isW = is.W, osH = os.H, osW = os.W;
    at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
      std::vector<Tap<T>> ty(OH), tx(OW);
      int64_t tabulated = -1;  // the sample whose taps are in ty / tx
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const Box b = rcm::load_box(pb, n, H, W);
        if (n != tabulated) {
          for (int64_t oy = 0; oy < OH; ++oy) ty[oy] = resize_tap<T>(oy, b.y2 - b.y1 + 1, OH, bilinear);
          for (int64_t ox = 0; ox < OW; ++ox) tx[ox] = resize_tap<T>(ox, b.x2 - b.x1 + 1, OW, bilinear);
          tabulated = n;
        }
        const scalar_t* in = pf + n * is.N + c * is.C;
        scalar_t* o = po + n * os.N + c * os.C;
        for (int64_t oy = 0; oy < OH; ++oy) {
          scalar_t* orow = o + oy * osH;
          for (int64_t ox = 0; ox < OW; ++ox)
            orow[ox * osW] = static_cast<scalar_t>(rcm::crop_value<T>(in, isH, isW, b, ty[oy], tx[ox], bilinear));
        }
      }
    });
  });
}

TORCH_LIBRARY_IMPL(walnet, CPU, m) {
  m.impl("mask_boxes", &mask_boxes_cpu);
  m.impl("crop_resize", &crop_resize_cpu);
  m.impl("crop_resize_backward", &rcm::crop_resize_backward_cpu);
}

}  // namespace walnet

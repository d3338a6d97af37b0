// CPU kernels of the one-pass RCM ops over all feature levels (docs/design.md §5): roi_boxes
// (every level's box from one sweep of each sample's map, with rcm.h's level logic, as the CUDA
// kernel), crop_levels and crop_levels_backward (each level through crop_resize's CPU paths: the
// fast nearest copies, and the streaming nearest backward, which sums in rcm::crop_grad's order
// and is several times faster on a CPU than a gather per input pixel).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "rcm.h"
#include "rcm_cpu.h"

namespace walnet {
namespace {

using rcm::Box;

at::Tensor roi_boxes_cpu(const at::Tensor& prob, at::IntArrayRef heights, at::IntArrayRef widths, double threshold,
                         double dilation) {
  check_roi_boxes(prob, heights, widths);
  check_dilation(dilation, "roi_boxes");
  const int64_t N = prob.size(0), h = prob.size(1), w = prob.size(2), L = static_cast<int64_t>(heights.size());
  const int64_t sN = prob.stride(0), sH = prob.stride(1), sW = prob.stride(2);
  auto out = at::empty({N, L, 4}, prob.options().dtype(at::kInt));
  int32_t* po = out.mutable_data_ptr<int32_t>();
  // The levels reading each source row and column, once for the batch.
  std::vector<uint8_t> row_levels(h), col_levels(w);
  for (int64_t r = 0; r < h; ++r) row_levels[r] = rcm::read_levels(r, h, heights.data(), L);
  for (int64_t c = 0; c < w; ++c) col_levels[c] = rcm::read_levels(c, w, widths.data(), L);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "roi_boxes_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pp = prob.const_data_ptr<scalar_t>();
    const auto thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> crossing_cols(w);
      for (int64_t n = begin; n < end; ++n) {
        Box src[kMaxLevels];  // per level, in source coordinates
        for (Box& b : src) b = {h, w, -1, -1};
        std::fill(crossing_cols.begin(), crossing_cols.end(), 0);
        for (int64_t r = 0; r < h; ++r) {
          const scalar_t* row = pp + n * sN + r * sH;
          const uint32_t own = row_levels[r];
          uint32_t crossing = 0;
          for (int64_t c = 0; c < w; ++c) {
            if (rcm::is_foreground<T>(row[c * sW], thr)) {
              crossing |= col_levels[c];
              crossing_cols[c] |= own;
            }
          }
          const uint32_t occupied = rcm::occupied_levels(own, crossing);
          for (int64_t l = 0; l < L; ++l)
            if (occupied >> l & 1u) src[l].y1 = std::min(src[l].y1, r), src[l].y2 = r;
        }
        for (int64_t c = 0; c < w; ++c) {
          const uint32_t occupied = rcm::occupied_levels(col_levels[c], crossing_cols[c]);
          for (int64_t l = 0; l < L; ++l)
            if (occupied >> l & 1u) src[l].x1 = std::min(src[l].x1, c), src[l].x2 = c;
        }
        for (int64_t l = 0; l < L; ++l) {
          const Box b = rcm::level_box(src[l], h, w, heights[l], widths[l], dilation);
          int32_t* o = po + 4 * (n * L + l);
          o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
        }
      }
    });
  });
  return out;
}

// crop_levels and its backward: each level through crop_resize's CPU paths (which tabulate the
// taps or readers once per sample), its boxes[:, l] copied into the [N,4] rows those read.
template <typename Crop>
std::vector<at::Tensor> per_level(at::TensorList levels, const at::Tensor& boxes_, Crop crop) {
  const auto boxes = boxes_.contiguous();
  const int64_t N = levels[0].size(0), L = static_cast<int64_t>(levels.size());
  const int32_t* pb = boxes.const_data_ptr<int32_t>();
  std::vector<int32_t> level_boxes(4 * N);
  std::vector<at::Tensor> out;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& t = levels[l];
    for (int64_t n = 0; n < N; ++n) std::copy_n(pb + 4 * (n * L + l), 4, level_boxes.data() + 4 * n);
    out.push_back(rcm::crop_output(t, t.size(2), t.size(3)));
    if (out.back().numel() > 0) crop(t, level_boxes.data(), out.back());
  }
  return out;
}

std::vector<at::Tensor> crop_levels_cpu(at::TensorList features, const at::Tensor& boxes) {
  check_levels(features, "features", boxes, "crop_levels");
  return per_level(features, boxes, [](const at::Tensor& f, const int32_t* pb, at::Tensor& out) {
    rcm::crop_resize_into(f, pb, out, false);
  });
}

std::vector<at::Tensor> crop_levels_backward_cpu(at::TensorList grads, const at::Tensor& boxes) {
  check_levels(grads, "grads", boxes, "crop_levels_backward");
  return per_level(grads, boxes, [](const at::Tensor& g, const int32_t* pb, at::Tensor& out) {
    rcm::crop_nearest_backward_into(g, pb, out);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CPU, m) {
  m.impl("roi_boxes", &roi_boxes_cpu);
  m.impl("crop_levels", &crop_levels_cpu);
  m.impl("crop_levels_backward", &crop_levels_backward_cpu);
}

}  // namespace walnet

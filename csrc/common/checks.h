// Input checks shared by the CPU and CUDA entry points (docs/design.md §2). The Python wrappers
// raise friendlier errors first; these keep a direct torch.ops.walnet.* call memory-safe.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace walnet {

inline void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, name, " must be [N,H,W], got ", t.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.size(1) > 0 && t.size(2) > 0, name, " must have non-empty H and W");
  // Per-segment counters are 32-bit on the GPU.
  TORCH_CHECK(t.size(1) * t.size(2) < (int64_t(1) << 31), name, " must have fewer than 2^31 pixels");
}

inline void check_labels(const at::Tensor& labels, const at::Tensor& like) {
  TORCH_CHECK(labels.dim() == 3, "labels must be [N,H,W], got ", labels.dim(), " dimensions");
  TORCH_CHECK(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
              "labels must be int32 or int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.sizes() == like.sizes(), "labels shape ", labels.sizes(),
              " must equal the map shape ", like.sizes());
  TORCH_CHECK(labels.device() == like.device(), "labels must be on ", like.device());
}

// a1 sets the target size; a2 and a3 are coarser (or equal) maps of the same batch and dtype.
inline void check_attention(const at::Tensor& a1, const at::Tensor& a2, const at::Tensor& a3) {
  check_map(a1, "a1");
  check_map(a2, "a2");
  check_map(a3, "a3");
  for (const at::Tensor* t : {&a2, &a3}) {
    TORCH_CHECK(t->size(0) == a1.size(0), "attention maps must share the batch size");
    TORCH_CHECK(t->size(1) <= a1.size(1) && t->size(2) <= a1.size(2),
                "a2 and a3 must not be larger than a1");
    TORCH_CHECK(t->scalar_type() == a1.scalar_type(), "attention maps must share one dtype");
    TORCH_CHECK(t->device() == a1.device(), "attention maps must be on one device");
  }
}

inline void check_features(const at::Tensor& f, const char* name) {
  TORCH_CHECK(f.dim() == 4, name, " must be [N,C,H,W], got ", f.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), name, " must be a floating tensor, got ", f.scalar_type());
  TORCH_CHECK(f.size(2) > 0 && f.size(3) > 0, name, " must have non-empty H and W");
}

inline void check_boxes(const at::Tensor& boxes, const at::Tensor& features) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == features.size(0),
              "boxes must be [N,4] with the features' N, got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kInt, "boxes must be int32, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == features.device(), "boxes must be on ", features.device());
}

// A size an op makes, H x W; `op` and `what` name it in the error ("mask_boxes: the target size").
// Sizes and box coordinates travel as int32 (the boxes tensor), so a size must fit one.
inline void check_size(int64_t H, int64_t W, const char* op, const char* what) {
  TORCH_CHECK(H > 0 && W > 0 && H <= INT32_MAX && W <= INT32_MAX, op, ": the ", what,
              " size must be positive and below 2^31, got ", H, "x", W);
}

// crop_resize (t: the features, H x W: the output size) and its backward (t: the output's
// gradient, H x W: the input size).
inline void check_crop(const at::Tensor& t, const char* name, const at::Tensor& boxes, int64_t H, int64_t W,
                       const char* op, const char* what) {
  check_features(t, name);
  check_boxes(boxes, t);
  check_size(H, W, op, what);
}

// mask_boxes' and roi_boxes' dilation: any non-negative value, +inf included (the box then spans
// the map).
inline void check_dilation(double dilation, const char* op = "mask_boxes") {
  TORCH_CHECK(dilation >= 0, op, ": dilation must be >= 0 (and not NaN), got ", dilation);
}

// --- The one-pass RCM ops over the feature levels (docs/design.md §5) ------------------------

// Levels per call at most: their sizes (roi_boxes) and tensors (crop_levels) reach the CUDA
// kernels by value, in fixed-size arrays.
constexpr int64_t kMaxLevels = 8;

inline void check_level_count(int64_t L, const char* op, const char* name) {
  TORCH_CHECK(L >= 1 && L <= kMaxLevels, op, ": ", name, " must hold 1 to ", kMaxLevels, " levels, got ", L);
}

// roi_boxes' map and level sizes (the dilation is checked by check_dilation).
inline void check_roi_boxes(const at::Tensor& prob, at::IntArrayRef heights, at::IntArrayRef widths) {
  check_map(prob, "prob");
  check_level_count(static_cast<int64_t>(heights.size()), "roi_boxes", "heights");
  TORCH_CHECK(widths.size() == heights.size(), "roi_boxes: widths must have one entry per level, like heights (",
              heights.size(), "), got ", widths.size());
  for (size_t l = 0; l < heights.size(); ++l) check_size(heights[l], widths[l], "roi_boxes", "level");
}

// The per-level boxes of crop_levels and its backward: int32 [N,L,4] on the levels' device.
inline void check_level_boxes(const at::Tensor& boxes, const at::Tensor& like, int64_t L) {
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(0) == like.size(0) && boxes.size(1) == L && boxes.size(2) == 4,
              "boxes must be [N,L,4] with the levels' N = ", like.size(0), " and L = ", L, ", got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kInt, "boxes must be int32, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == like.device(), "boxes must be on ", like.device());
}

// Offsets inside one sample of a level are 32-bit in the kernels: its farthest element (through
// the strides) and its element count must stay below 2^31.
inline bool sample_fits_int32(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 1; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return last < (int64_t(1) << 31) && t.numel() / std::max<int64_t>(t.size(0), 1) < (int64_t(1) << 31);
}

// The levels of crop_levels (name "features") and of its backward ("grads"): 1 to kMaxLevels
// floating [N,C,H,W] tensors of one batch size, dtype and device, with their boxes.
inline void check_levels(at::TensorList levels, const char* name, const at::Tensor& boxes, const char* op) {
  const int64_t L = static_cast<int64_t>(levels.size());
  check_level_count(L, op, name);
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& t = levels[l];
    const std::string level = std::string(name) + "[" + std::to_string(l) + "]";
    check_features(t, level.c_str());
    TORCH_CHECK(t.size(0) == levels[0].size(0), op, ": ", level, " has batch size ", t.size(0), " but ", name,
                "[0] has ", levels[0].size(0));
    TORCH_CHECK(t.scalar_type() == levels[0].scalar_type(), op, ": ", level, " is ", t.scalar_type(), " but ", name,
                "[0] is ", levels[0].scalar_type(), " (one dtype for all levels)");
    TORCH_CHECK(t.device() == levels[0].device(), op, ": ", level, " is on ", t.device(), " but ", name, "[0] is on ",
                levels[0].device());
    TORCH_CHECK(sample_fits_int32(t), op, ": ", level, " must have fewer than 2^31 elements per sample");
  }
  check_level_boxes(boxes, levels[0], L);
}

// Felzenszwalb's images, float64 [N,C,H,W] (pixel indices and segment sizes are int32), and its
// merge parameters: k = scale / 255 >= 0 (k = 0: only the min_size pass merges) and min_size.
inline void check_images(const at::Tensor& images, double k, int64_t min_size) {
  TORCH_CHECK(images.dim() == 4, "images must be [N,C,H,W], got ", images.dim(), " dimensions");
  TORCH_CHECK(images.scalar_type() == at::kDouble, "images must be float64, got ", images.scalar_type());
  TORCH_CHECK(images.size(1) > 0 && images.size(2) > 0 && images.size(3) > 0, "images must have C, H, W > 0");
  TORCH_CHECK(images.size(2) * images.size(3) < (int64_t(1) << 30), "images must have fewer than 2^30 pixels");
  TORCH_CHECK(std::isfinite(k) && k >= 0 && min_size >= 0, "felzenszwalb: k must be finite and >= 0, and min_size >= 0");
}

}  // namespace walnet

// Internal to the RCM CPU kernels, which are split by code path: the op entry points and the
// generic forward (rcm_forward_cpu.cpp) call the nearest forward's fast paths
// (rcm_nearest_cpu.cpp) and register the backward (rcm_backward_cpu.cpp) declared here; the
// one-pass ops over all levels (rcm_levels_cpu.cpp) crop each level through crop_resize_into and
// crop_nearest_backward_into.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace walnet {
namespace rcm {

// Planes per parallel task at least, so that small maps (7x7: 49 values a plane) are not split
// finer than the cost of waking a thread.
inline int64_t plane_grain(int64_t plane_size) { return std::max<int64_t>(1, 32768 / plane_size); }

// Nearest crop_resize of `features` into `out` (allocated, non-empty) through a fast path:
// unit W strides (planes of rows) or unit C strides (channels_last pixels). Returns false,
// writing nothing, when neither tensor pair has such strides.
bool crop_nearest_cpu(const at::Tensor& features, const int32_t* boxes, at::Tensor& out);

// crop_resize of `features` into `out` (allocated: the output size and layout), box n at
// boxes[4 * n]: the nearest fast paths where the strides allow, else the generic path.
void crop_resize_into(const at::Tensor& features, const int32_t* boxes, at::Tensor& out, bool bilinear);

// Nearest crop_resize_backward of `grad` into `out` (allocated: the features' size and layout),
// box n at boxes[4 * n].
void crop_nearest_backward_into(const at::Tensor& grad, const int32_t* boxes, at::Tensor& out);

// The CPU kernel of crop_resize_backward, both modes.
at::Tensor crop_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W,
                                    bool bilinear);

}  // namespace rcm
}  // namespace walnet

// Strides of an [N,C,H,W] tensor as plain values: passed by value to CUDA kernels, and held in
// locals on the CPU, where the compiler cannot prove that writes through an output pointer
// leave a tensor's strides unchanged.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace walnet {

struct Strides4 {
  int64_t N, C, H, W;
};

inline Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

}  // namespace walnet

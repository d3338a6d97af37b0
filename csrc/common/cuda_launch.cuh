// Launch configuration shared by the CUDA kernels: a fixed block size, a grid for grid-stride
// loops (any grid size gives the same results; the cap only bounds launch size), and the loop.
#pragma once

#include <cstdint>

namespace walnet {

constexpr int kBlock = 256;

inline int grid_for(int64_t n) {
  constexpr int64_t kMaxBlocks = 65535;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < kMaxBlocks ? blocks : kMaxBlocks));
}

}  // namespace walnet

// A grid-stride loop over [0, total): every thread of the grid starts at its own index and steps
// by the number of threads in the grid, so each index is visited once whatever the grid size.
#define WALNET_GRID_STRIDE(i, total) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (total); i += int64_t(gridDim.x) * blockDim.x)

// Launch configuration shared by the CUDA kernels: a fixed block size and a grid for
// grid-stride loops (any grid size gives the same results; the cap only bounds launch size).
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

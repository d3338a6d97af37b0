// The Felzenszwalb op's algorithm arguments, parsed and checked once for the CPU and CUDA entry
// points (the Python wrapper checks them first, with friendlier messages).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "warp_rounds.h"

namespace walnet {
namespace fz {

// "sequential": skimage's Kruskal (CPU); "reservations": the warp rounds of warp_rounds.h;
// "block": the 1,024-thread block rounds of felzenszwalb.h.
enum class Algorithm { kSequential, kReservations, kBlock };

inline Algorithm parse_algorithm(c10::string_view name) {
  if (name == "sequential") return Algorithm::kSequential;
  if (name == "reservations") return Algorithm::kReservations;
  TORCH_CHECK(name == "block", "felzenszwalb: algorithm must be 'sequential', 'reservations' or 'block', got '",
              std::string(name), "'");
  return Algorithm::kBlock;
}

inline RoundRules round_rules(int64_t window, bool compact, bool prefilter, bool chain) {
  TORCH_CHECK(window == 32 || window == kMaxWindow, "felzenszwalb: window must be 32 or 64, got ", window);
  return {static_cast<int32_t>(window), compact, prefilter, chain};
}

// The shared memory the warp kernel plans with: the caller's limit where given (> 0), capped by
// the device's.
inline int64_t shared_limit_for(int64_t requested, int64_t device_limit) {
  TORCH_CHECK(requested >= 0, "felzenszwalb: shared_limit must be >= 0, got ", requested);
  return requested > 0 && requested < device_limit ? requested : device_limit;
}

}  // namespace fz
}  // namespace walnet

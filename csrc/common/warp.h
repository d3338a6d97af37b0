// One warp's execution, written once for a CUDA kernel and for its step-for-step CPU emulation.
//
// A warp algorithm is a sequence of lane steps separated by warp collectives:
//
//   warp.each([&](int lane) { ... });   every lane runs the body: on the device each thread runs
//                                       its own lane, concurrently; on the host lanes 0..31 run
//                                       one after the other
//   Lanes<T> x;   x[lane]               a value per lane: a register on the device (the index is
//                                       the thread's own lane), an array of 32 on the host
//   warp.ballot(p)   warp.sync()        warp collectives (__ballot_sync, __syncwarp)
//
// Code outside `each` is warp-uniform: the device runs it in every lane with the same values,
// the host once. Within one step, a lane must not read what another lane writes in that step,
// except through atomics whose result does not depend on their order (a bid that ORs a bit, a
// CAS that claims an empty slot). Under that rule, lanes run in any order give the same state at
// the next collective, so the host's sequential lanes compute exactly what the device's
// concurrent lanes compute. Asynchronous copies (cp.async on sm_80+) are plain copies on the host.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(_MSC_VER) && !defined(__CUDA_ARCH__)
#include <intrin.h>
#endif

#include "macros.h"

namespace walnet {
namespace warp {

constexpr int kLanes = 32;
constexpr uint32_t kAll = 0xffffffffu;

#if defined(__CUDA_ARCH__)

template <typename T>
struct Lanes {
  T v;
  __device__ __forceinline__ T& operator[](int) { return v; }
  __device__ __forceinline__ const T& operator[](int) const { return v; }
};

struct Warp {
  template <typename F>
  __device__ __forceinline__ void each(F&& f) const {
    f(static_cast<int>(threadIdx.x & (kLanes - 1)));
  }
  __device__ __forceinline__ uint32_t ballot(const Lanes<bool>& p) const { return __ballot_sync(kAll, p.v); }
  __device__ __forceinline__ void sync() const { __syncwarp(kAll); }
};

__device__ __forceinline__ int32_t atomic_cas(int32_t* p, int32_t expected, int32_t desired) {
  return atomicCAS(reinterpret_cast<int*>(p), expected, desired);
}
__device__ __forceinline__ void atomic_or(uint32_t* p, uint32_t bits) { atomicOr(p, bits); }

// 16 bytes from global to shared memory without passing through registers, L1 bypassed
// (cp.async.cg); complete once wait_async<n> has returned, visible to the other lanes after
// the next warp.sync().
__device__ __forceinline__ void copy_async16(void* shared_dst, const void* global_src) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src) : "memory");
#else
  *static_cast<int4*>(shared_dst) = *static_cast<const int4*>(global_src);
#endif
}
// Closes this lane's group of copies issued since the last commit.
__device__ __forceinline__ void commit_async() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most `kPending` of this lane's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void wait_async() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

__device__ __forceinline__ int popc64(uint64_t x) { return __popcll(x); }
// Index of the lowest set bit (x != 0).
__device__ __forceinline__ int lowest64(uint64_t x) { return __ffsll(static_cast<long long>(x)) - 1; }

#else  // the host: lanes run one after the other

template <typename T>
struct Lanes {
  T v[kLanes];
  T& operator[](int lane) { return v[lane]; }
  const T& operator[](int lane) const { return v[lane]; }
};

struct Warp {
  template <typename F>
  void each(F&& f) const {
    for (int lane = 0; lane < kLanes; ++lane) f(lane);
  }
  uint32_t ballot(const Lanes<bool>& p) const {
    uint32_t mask = 0;
    for (int lane = 0; lane < kLanes; ++lane) mask |= static_cast<uint32_t>(p.v[lane]) << lane;
    return mask;
  }
  void sync() const {}
};

inline int32_t atomic_cas(int32_t* p, int32_t expected, int32_t desired) {
  const int32_t old = *p;
  if (old == expected) *p = desired;
  return old;
}
inline void atomic_or(uint32_t* p, uint32_t bits) { *p |= bits; }

inline void copy_async16(void* shared_dst, const void* global_src) { std::memcpy(shared_dst, global_src, 16); }
inline void commit_async() {}
template <int kPending>
inline void wait_async() {}

// (C++17: torch builds extensions as C++17 or C++20, so no <bit>.)
#if defined(_MSC_VER)
inline int popc64(uint64_t x) { return static_cast<int>(__popcnt64(x)); }
inline int lowest64(uint64_t x) {
  unsigned long i;
  _BitScanForward64(&i, x);
  return static_cast<int>(i);
}
#else
inline int popc64(uint64_t x) { return __builtin_popcountll(x); }
inline int lowest64(uint64_t x) { return __builtin_ctzll(x); }
#endif

#endif

// Bits of the lanes (or slots) below `i` (i in 0..63).
WALNET_HD uint64_t below(int i) { return (uint64_t(1) << i) - 1; }

}  // namespace warp
}  // namespace walnet

// Shared macros for code that is compiled both by the host C++ compiler and by nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define WALNET_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced: these small functions sit in the innermost loops of the CPU kernels.
#define WALNET_HD inline __attribute__((always_inline))
#else
#define WALNET_HD inline
#endif

// Unrolls the next loop (a fixed, small trip count) on the device and with GCC/Clang.
#if defined(__CUDA_ARCH__)
#define WALNET_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define WALNET_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define WALNET_UNROLL _Pragma("GCC unroll 4")
#else
#define WALNET_UNROLL
#endif

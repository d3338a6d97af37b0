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

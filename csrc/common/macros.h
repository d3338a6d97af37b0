// Shared macros for code that is compiled both by the host C++ compiler and by nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define WALNET_HD __host__ __device__ __forceinline__
#else
#define WALNET_HD inline
#endif

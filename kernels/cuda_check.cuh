// Error checks for CUDA runtime and library calls: a failed call throws gpt2::Error
// naming the call, file and line (kernels never abort the process).
#pragma once
#include <cuda_runtime.h>

#include "error.hpp"

#define CUDA_CHECK(call)                                                              \
  do {                                                                                \
    cudaError_t err_ = (call);                                                        \
    if (err_ != cudaSuccess)                                                          \
      ::gpt2::fail("CUDA error ", cudaGetErrorString(err_), " in ", #call, " at ",    \
                   __FILE__, ":", __LINE__);                                          \
  } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

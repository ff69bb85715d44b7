// What the standalone CUDA timing tools share (tools/bench_adapprox_parts.cu,
// tools/bench_adapprox_thin.cu): a check that ends the tool, zeroed device buffers, and
// the median of repeated runs timed with cudaEvents on the default stream.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#define CHECK(x)                                                     \
  do {                                                               \
    if (!(x)) {                                                      \
      std::fprintf(stderr, "failed: %s at line %d\n", #x, __LINE__); \
      std::exit(1);                                                  \
    }                                                                \
  } while (0)

namespace bench {

// After one warm-up run of f.
inline double median_ms(const std::function<void()>& f, int reps) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  f();
  std::vector<double> ms;
  for (int r = 0; r < reps; r++) {
    cudaEventRecord(a);
    f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

template <class T>
T* device(size_t n) {
  T* p = nullptr;
  CHECK(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
  CHECK(cudaMemset(p, 0, n * sizeof(T)) == cudaSuccess);
  return p;
}

}  // namespace bench

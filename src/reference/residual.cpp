// The residual stream's add, alone and followed by the next layernorm. Elementwise (then
// row-wise), so any split over threads gives the same bits.
#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void residual_forward(S* out, const S* a, const S* b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// The composition itself: the fused kernels must equal it, rounding of the stored
// residual included.
template <class S>
void residual_layernorm_forward(S* residual_out, S* out, S* mean, S* rstd, const S* a,
                                const S* b, const S* weight, const S* bias, int N, int C) {
  residual_forward(residual_out, a, b, size_t(N) * C);
  layernorm_forward(out, mean, rstd, residual_out, weight, bias, N, C);
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);
template void residual_layernorm_forward<float>(float*, float*, float*, float*, const float*,
                                                const float*, const float*, const float*, int,
                                                int);
template void residual_layernorm_forward<double>(double*, double*, double*, double*,
                                                 const double*, const double*, const double*,
                                                 const double*, int, int);

}  // namespace gpt2::ref

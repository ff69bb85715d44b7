// The residual stream's add. Elementwise, so any split over threads gives the same bits.
#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void residual_forward(S* out, const S* a, const S* b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);

}  // namespace gpt2::ref

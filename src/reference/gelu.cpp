// GELU, tanh approximation (GPT-2's), evaluated in double. Elementwise, so the OpenMP
// split never changes the result.
#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void gelu_forward(S* out, const S* inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (size_t i = 0; i < n; i++) out[i] = S(gelu(double(inp[i])));
}

// dinp may alias dout: each element is read before it is written.
template <class S>
void gelu_backward(S* dinp, const S* inp, const S* dout, size_t n) {
  if (!dinp) return;
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (size_t i = 0; i < n; i++) dinp[i] = S(double(dout[i]) * gelu_grad(double(inp[i])));
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);

}  // namespace gpt2::ref

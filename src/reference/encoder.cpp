// Token + position embedding. The backward is a scatter-add into wte rows (a token
// can repeat within a batch), kept serial so the sum order, and thus the result,
// never depends on the thread count; it is O(B*T*C), negligible beside the matmuls.
#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void encoder_forward(S* out, const int* inp, const S* wte, const S* wpe, int B, int T, int C) {
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      S* o = out + (size_t(b) * T + t) * C;
      const S* w = wte + size_t(inp[b * T + t]) * C;
      const S* p = wpe + size_t(t) * C;
      for (int c = 0; c < C; c++) o[c] = S(double(w[c]) + double(p[c]));
    }
  }
}

template <class S>
void encoder_backward(S* dwte, S* dwpe, const S* dout, const int* inp, int B, int T, int C) {
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      const S* d = dout + (size_t(b) * T + t) * C;
      if (dwte) {
        S* w = dwte + size_t(inp[b * T + t]) * C;
        for (int c = 0; c < C; c++) w[c] += d[c];
      }
      if (dwpe) {
        S* p = dwpe + size_t(t) * C;
        for (int c = 0; c < C; c++) p[c] += d[c];
      }
    }
  }
}

template void encoder_forward<float>(float*, const int*, const float*, const float*, int, int,
                                     int);
template void encoder_forward<double>(double*, const int*, const double*, const double*, int,
                                      int, int);
template void encoder_backward<float>(float*, float*, const float*, const int*, int, int, int);
template void encoder_backward<double>(double*, double*, const double*, const int*, int, int,
                                       int);

}  // namespace gpt2::ref

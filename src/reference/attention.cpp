// Causal multi-head self-attention, scale 1/sqrt(HS), the way a flash kernel sees it:
// forward keeps only lse = logsumexp of each query's scaled scores; backward rebuilds
// each probability as p = exp(score - lse) instead of storing the T x T matrix.
// Every (batch, head) pair is independent, so each OpenMP iteration owns one pair and
// writes a disjoint slice of out/dqkv: the result never depends on the thread count.
#include <algorithm>
#include <limits>
#include <vector>

#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void attention_forward(S* out, S* lse, const S* qkv, int B, int T, int C, int NH) {
  const int HS = C / NH;
  const double scale = 1.0 / std::sqrt(double(HS));
#pragma omp parallel for schedule(static) if (size_t(B) * NH * T * T * HS >= kParallelMinWork)
  for (int bh = 0; bh < B * NH; bh++) {
    const int b = bh / NH, h = bh % NH;
    const S* base = qkv + size_t(b) * T * 3 * C;
    std::vector<double> score(T), acc(HS);
    for (int t = 0; t < T; t++) {
      const S* q = base + size_t(t) * 3 * C + h * HS;
      double mx = -std::numeric_limits<double>::infinity();
      for (int s = 0; s <= t; s++) {
        const S* k = base + size_t(s) * 3 * C + C + h * HS;
        double dot = 0.0;
        for (int i = 0; i < HS; i++) dot += double(q[i]) * k[i];
        score[s] = dot * scale;
        mx = std::max(mx, score[s]);
      }
      double sum = 0.0;
      for (int s = 0; s <= t; s++) sum += std::exp(score[s] - mx);
      const double l = mx + std::log(sum);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int s = 0; s <= t; s++) {
        const double p = std::exp(score[s] - l);
        const S* v = base + size_t(s) * 3 * C + 2 * C + h * HS;
        for (int i = 0; i < HS; i++) acc[i] += p * v[i];
      }
      S* o = out + (size_t(b) * T + t) * C + h * HS;
      for (int i = 0; i < HS; i++) o[i] = S(acc[i]);
      if (lse) lse[(size_t(b) * NH + h) * T + t] = S(l);
    }
  }
}

// With p the probabilities and dp = dout . v, softmax's backward is
// dscore = p * (dp - D), where D = sum_s p_s dp_s = dout . out (FlashAttention's
// D_i = rowsum(dO * O)), so it needs out instead of a second pass over the keys.
template <class S>
void attention_backward(S* dqkv, const S* dout, const S* qkv, const S* out, const S* lse,
                        int B, int T, int C, int NH) {
  if (!dqkv) return;
  const int HS = C / NH;
  const double scale = 1.0 / std::sqrt(double(HS));
#pragma omp parallel for schedule(static) if (size_t(B) * NH * T * T * HS >= kParallelMinWork)
  for (int bh = 0; bh < B * NH; bh++) {
    const int b = bh / NH, h = bh % NH;
    const S* base = qkv + size_t(b) * T * 3 * C;
    std::vector<double> dq(size_t(T) * HS, 0.0), dk(size_t(T) * HS, 0.0),
        dv(size_t(T) * HS, 0.0);
    for (int t = 0; t < T; t++) {
      const S* q = base + size_t(t) * 3 * C + h * HS;
      const S* d = dout + (size_t(b) * T + t) * C + h * HS;
      const S* o = out + (size_t(b) * T + t) * C + h * HS;
      const double l = lse[(size_t(b) * NH + h) * T + t];
      double D = 0.0;
      for (int i = 0; i < HS; i++) D += double(d[i]) * o[i];
      for (int s = 0; s <= t; s++) {
        const S* k = base + size_t(s) * 3 * C + C + h * HS;
        const S* v = base + size_t(s) * 3 * C + 2 * C + h * HS;
        double dot = 0.0, dp = 0.0;
        for (int i = 0; i < HS; i++) dot += double(q[i]) * k[i], dp += double(d[i]) * v[i];
        const double p = std::exp(dot * scale - l);
        const double ds = p * (dp - D) * scale;
        for (int i = 0; i < HS; i++) {
          dq[size_t(t) * HS + i] += ds * k[i];
          dk[size_t(s) * HS + i] += ds * q[i];
          dv[size_t(s) * HS + i] += p * d[i];
        }
      }
    }
    for (int t = 0; t < T; t++) {
      S* g = dqkv + (size_t(b) * T + t) * 3 * C + h * HS;
      for (int i = 0; i < HS; i++) {
        g[i] = S(dq[size_t(t) * HS + i]);
        g[C + i] = S(dk[size_t(t) * HS + i]);
        g[2 * C + i] = S(dv[size_t(t) * HS + i]);
      }
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         const double*, int, int, int, int);

}  // namespace gpt2::ref

// Shared tools of the op tests (tests/test_<op>.cpp): random tensors, central finite
// differences in double, and a relative error that is scale-aware but not fooled by
// near-zero entries.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <random>
#include <vector>

namespace gpt2::test {

using Vec = std::vector<double>;

inline Vec random_vec(size_t n, std::mt19937& rng, double scale = 1.0) {
  std::uniform_real_distribution<double> u(-scale, scale);
  Vec v(n);
  for (double& x : v) x = u(rng);
  return v;
}

inline std::vector<float> to_float(const Vec& v) { return {v.begin(), v.end()}; }
template <class A>
Vec to_double(const A& v) { return Vec(v.begin(), v.end()); }

// max |got - want| / max |want|: the error relative to the tensor's own scale.
template <class A, class B>
double rel_err(const A& got, const B& want) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); i++) {
    diff = std::max(diff, std::abs(double(got[i]) - double(want[i])));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

// d loss / d x by central differences, perturbing x in place (restored after).
// h = 1e-5 balances truncation (~h^2) and cancellation (~1e-16 / h) in double.
inline Vec numeric_grad(Vec& x, const std::function<double()>& loss, double h = 1e-5) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double up = loss();
    x[i] = x0 - h;
    const double down = loss();
    x[i] = x0;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

}  // namespace gpt2::test

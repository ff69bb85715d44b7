// Times causal attention in bf16 at GPT-2's head size (HS 64, T 1024), B in {8, 16} and
// NH in {12, 16}: the FMA kernels (attention.cu, one query per thread) against the
// tensor-core kernels (attention_mma.cu) in the same run, each the median of 20
// cudaEvent-timed calls after a warm-up. Causal flops: forward 2 B NH T^2 HS (QK^T and
// PV over the lower half), backward 2.5x that (five products, P recomputed). Also prints
// max |new - old| / max |old| of out and dqkv as a sanity check. On Hopper (sm_90a builds)
// also the forward on wgmma against the mma.sync forward, which must agree bit for bit.
// Run (CUDA builds): cmake --build build --target bench_attention && ./build/bench_attention
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "kernels.cuh"

namespace {

using bf = __nv_bfloat16;
using namespace gpt2::cuda;

template <class X>
struct Buf {
  X* p = nullptr;
  size_t n;
  explicit Buf(size_t n_) : n(n_) { CUDA_CHECK(cudaMalloc(&p, n * sizeof(X))); }
  ~Buf() { cudaFree(p); }
  Buf(Buf&& o) noexcept : p(std::exchange(o.p, nullptr)), n(o.n) {}
  Buf& operator=(Buf&&) = delete;
  std::vector<float> download() const {
    std::vector<X> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(X), cudaMemcpyDeviceToHost));
    std::vector<float> f(n);
    for (size_t i = 0; i < n; i++) f[i] = float(h[i]);
    return f;
  }
};

Buf<bf> random_bf16(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<bf> h(n);
  for (bf& x : h) x = __float2bfloat16_rn(u(rng));
  Buf<bf> d(n);
  CUDA_CHECK(cudaMemcpy(d.p, h.data(), n * sizeof(bf), cudaMemcpyHostToDevice));
  return d;
}

template <class F>
double median_ms(F&& f) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  f();
  std::vector<float> ms(20);
  for (float& m : ms) {
    CUDA_CHECK(cudaEventRecord(start));
    f();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    CUDA_CHECK(cudaEventElapsedTime(&m, start, stop));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return 0.5 * (ms[9] + ms[10]);
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); i++) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return diff / scale;
}

void bench(int B, int NH) {
  const int T = 1024, HS = 64, C = NH * HS;
  const size_t n = size_t(B) * T * C;
  std::mt19937 rng(B * 100 + NH);
  Buf<bf> qkv = random_bf16(3 * n, rng), dout = random_bf16(n, rng), out(n), dqkv(3 * n);
  Buf<float> lse(size_t(B) * NH * T);
  Buf<unsigned char> scratch(attention_backward_scratch_bytes(B, T, NH));
  const double fwd_flop = 2.0 * B * NH * double(T) * T * HS, bwd_flop = 2.5 * fwd_flop;
  std::vector<float> old_out, old_dqkv;
  for (const bool tensor_cores : {false, true}) {
    const double fwd = median_ms([&] {
      if (tensor_cores) attention_forward(out.p, lse.p, qkv.p, B, T, C, NH);
      else attention_forward_fma(out.p, lse.p, qkv.p, B, T, C, NH);
    });
    const double bwd = median_ms([&] {
      if (tensor_cores)
        attention_backward(dqkv.p, dout.p, qkv.p, out.p, lse.p, B, T, C, NH, scratch.p);
      else attention_backward_fma(dqkv.p, dout.p, qkv.p, out.p, lse.p, B, T, C, NH, scratch.p);
    });
    std::printf("B %2d T %d NH %2d HS %d %-12s fwd %7.3f ms %6.1f TFLOP/s   bwd %7.3f ms %6.1f "
                "TFLOP/s",
                B, T, NH, HS, tensor_cores ? "tensor-core" : "fma", fwd, fwd_flop / fwd / 1e9,
                bwd, bwd_flop / bwd / 1e9);
    if (!tensor_cores) {
      old_out = out.download();
      old_dqkv = dqkv.download();
      std::printf("\n");
    } else {
      std::printf("   vs fma: out %.1e dqkv %.1e\n", rel_diff(out.download(), old_out),
                  rel_diff(dqkv.download(), old_dqkv));
    }
  }
  if (!attention_wgmma_available()) return;
  // The forward above ran on wgmma: the mma.sync forward for comparison, same inputs.
  Buf<bf> out_sync(n);
  Buf<float> lse_sync(lse.n);
  const double fwd_sync = median_ms(
      [&] { attention_forward_mma(out_sync.p, lse_sync.p, qkv.p, B, T, C, NH, false); });
  const double fwd_wgmma =
      median_ms([&] { attention_forward_mma(out.p, lse.p, qkv.p, B, T, C, NH); });
  std::printf("B %2d T %d NH %2d HS %d forward wgmma %7.3f ms, mma.sync %7.3f ms (%.2fx); "
              "out and lse bit for bit equal: %s\n",
              B, T, NH, HS, fwd_wgmma, fwd_sync, fwd_sync / fwd_wgmma,
              out.download() == out_sync.download() && lse.download() == lse_sync.download()
                  ? "yes" : "NO");
  Buf<bf> dqkv_sync(3 * n);
  float* delta = reinterpret_cast<float*>(scratch.p);
  const double bwd_sync = median_ms([&] {
    attention_backward_mma(dqkv_sync.p, delta, dout.p, qkv.p, out.p, lse.p, B, T, C, NH, false);
  });
  const double bwd_wgmma = median_ms(
      [&] { attention_backward_mma(dqkv.p, delta, dout.p, qkv.p, out.p, lse.p, B, T, C, NH); });
  std::printf("B %2d T %d NH %2d HS %d backward wgmma %7.3f ms, mma.sync %7.3f ms (%.2fx); "
              "dqkv bit for bit equal: %s\n",
              B, T, NH, HS, bwd_wgmma, bwd_sync, bwd_sync / bwd_wgmma,
              dqkv.download() == dqkv_sync.download() ? "yes" : "NO");
}

}  // namespace

int main() {
  try {
    for (const int B : {8, 16})
      for (const int NH : {12, 16}) bench(B, NH);
  } catch (const gpt2::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}

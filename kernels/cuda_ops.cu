// CudaOps<T>: the Ops interface (src/ops.hpp) on one GPU, T = float or bf16. It maps
// host storage types to device types, owns the cuBLASLt handle and workspace, and a
// scratch buffer that grows to the largest need of any kernel (encoder sort, layernorm
// and bias partial sums, attention's delta); both are filed as MemCategory::workspace.
// Kernels live one concern per file beside this one; see kernels.cuh.
#include <algorithm>

#include "backend.hpp"
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2 {
namespace {

Device& require_cuda(Device& dev) {
  if (!dev.is_cuda()) fail("make_cuda_ops needs a CUDA device, but was given a CPU device");
  return dev;
}

template <class T>
class CudaOps final : public Ops<T> {
  using D = cuda::device_t<T>;

 public:
  explicit CudaOps(Device& dev)
      : dev_(require_cuda(dev)),
        lt_workspace_(dev, kLtWorkspaceBytes, MemCategory::workspace, "cuBLASLt workspace") {
    CUBLAS_CHECK(cublasLtCreate(&lt_.handle));
    lt_.workspace = lt_workspace_.get();
    lt_.workspace_bytes = lt_workspace_.bytes();
  }
  ~CudaOps() override { cublasLtDestroy(lt_.handle); }
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  void encoder_forward(T* out, const int* inp, const T* wte, const T* wpe, int B, int T_,
                       int C) override {
    cuda::encoder_forward(d(out), inp, d(wte), d(wpe), B, T_, C);
  }
  void encoder_backward(T* dwte, T* dwpe, const T* dout, const int* inp, int B, int T_,
                        int C) override {
    const size_t bytes = cuda::encoder_backward_scratch_bytes(B * T_);
    cuda::encoder_backward(d(dwte), d(dwpe), d(dout), inp, B, T_, C, scratch(bytes), bytes);
  }
  // C a multiple of 8 keeps the padded rows 16-byte aligned for the vector kernels and
  // cuBLASLt.
  bool pads_rows(int C) const override { return cuda_pads_rows(C); }
  void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                         const T* bias, int N, int C, bool padded = false) override {
    cuda::layernorm_forward(d(out), mean, rstd, d(inp), d(weight), d(bias), N, C, ld(C, padded));
  }
  void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                          const T* weight, const float* mean, const float* rstd, int N, int C,
                          float* dinp_colsum = nullptr) override {
    void* s = scratch(cuda::layernorm_backward_scratch_bytes(N, C));
    cuda::layernorm_backward(d(dinp), d(dweight), d(dbias), d(dout), d(inp), d(weight), mean,
                             rstd, N, C, s, dinp_colsum);
  }
  void matmul_forward(T* out, T* gelu_out, const T* inp, const T* weight, const T* bias, int N,
                      int C, int OC, bool padded = false, const T* residual = nullptr) override {
    cuda::matmul_forward(lt_, d(out), d(gelu_out), d(inp), d(weight), d(bias), N, C, OC,
                         ld(C, padded), d(residual));
  }
  void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                       const T* weight, const T* pre_gelu, int N, int C, int OC,
                       const float* dout_colsum = nullptr, bool padded = false) override {
    // Only a dbias computed here needs scratch (the classifier's matmul, with the
    // vocabulary as OC, has none): partial sums, or the padded GEMM's output.
    const int ldi = ld(C, padded);
    const bool gemm = cuda::bias_from_dweight_gemm(dweight, dbias, dout_colsum, C, ldi);
    void* s = dbias && !dout_colsum
                  ? scratch(cuda::matmul_backward_scratch_bytes(N, C, OC, gemm))
                  : nullptr;
    cuda::matmul_backward(lt_, d(dinp), d(dweight), d(dbias), d(dout), d(inp), d(weight),
                          d(pre_gelu), N, C, OC, s, dout_colsum, ldi);
  }
  void attention_forward(T* out, float* lse, const T* qkv, int B, int T_, int C,
                         int NH) override {
    cuda::attention_forward(d(out), lse, d(qkv), B, T_, C, NH);
  }
  void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse,
                          int B, int T_, int C, int NH) override {
    void* s = scratch(cuda::attention_backward_scratch_bytes(B, T_, NH));
    cuda::attention_backward(d(dqkv), d(dout), d(qkv), d(out), lse, B, T_, C, NH, s);
  }
  void gelu_forward(T* out, const T* inp, size_t n) override {
    cuda::gelu_forward(d(out), d(inp), n);
  }
  void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) override {
    cuda::gelu_backward(d(dinp), d(inp), d(dout), n);
  }
  void classifier(T* logits, float* losses, const int* targets, int N, int V, int Vp,
                  float dloss) override {
    cuda::classifier(d(logits), losses, targets, N, V, Vp, dloss);
  }

 private:
  static int ld(int C, bool padded) {
    if (padded && !cuda_pads_rows(C)) fail("internal: ones-padded rows with C = ", C);
    return padded ? C + kOnesPad : C;
  }
  static D* d(T* p) { return cuda::dev_ptr(p); }
  static const D* d(const T* p) { return cuda::dev_ptr(p); }

  // Grows during the first training step, which calls every op a step calls; a step that
  // Replay records (the second) finds it at its final size. Growing it later would leave
  // such a recording pointing at freed memory, hence the check.
  void* scratch(size_t bytes) {
    if (bytes > scratch_.bytes()) {
      if (dev_.holds_recording())
        fail("internal: kernel scratch would grow from ", scratch_.bytes(), " to ", bytes,
             " bytes after a CUDA graph recorded work that uses it (set train.cuda_graph=false)");
      scratch_ = DeviceBuffer<char>();  // free the old buffer before allocating the new one
      scratch_ = DeviceBuffer<char>(dev_, bytes, MemCategory::workspace, "kernel scratch");
    }
    return scratch_.get();
  }

  Device& dev_;
  DeviceBuffer<char> lt_workspace_;
  DeviceBuffer<char> scratch_;
  cuda::Lt lt_{};
};

}  // namespace

size_t cuda_kernel_scratch_bytes(const ModelConfig& cfg, int B, int T, const PlanGpu& gpu) {
  const int C = cfg.channels, N = B * T;
  // GPT2::backward's calls that take scratch: layernorm_backward at (N, C); matmul_backward
  // with dbias at OC = 3C (qkv), 4C (fc), on ones-padded rows where the GPU pads them
  // (attproj's and fcproj's dbias come from the layernorm backward's column sums);
  // attention_backward; and encoder_backward. scratch() frees the old buffer before it
  // allocates a larger one, so the ledger's workspace peak holds only the largest.
  const bool padded = cuda_pads_rows(C);  // qkv's and fc's dbias then from the dweight GEMM
  size_t bytes = std::max({cuda::layernorm_backward_scratch_bytes(N, C),
                           cuda::matmul_backward_scratch_bytes(N, C, 3 * C, padded),
                           cuda::matmul_backward_scratch_bytes(N, C, 4 * C, padded),
                           cuda::attention_backward_scratch_bytes(B, T, cfg.num_heads)});
  if (gpu.present) bytes = std::max(bytes, cuda::encoder_backward_scratch_bytes(N));
  return bytes;
}

template <class T>
std::unique_ptr<Ops<T>> make_cuda_ops(Device& dev) {
  return std::make_unique<CudaOps<T>>(dev);
}

template std::unique_ptr<Ops<float>> make_cuda_ops<float>(Device&);
template std::unique_ptr<Ops<bf16>> make_cuda_ops<bf16>(Device&);

}  // namespace gpt2

// The compute backend a config asks for (train.device, train.precision): the CPU (fp32,
// reference ops with Eigen matmuls, CPU optimizers) or one GPU (CUDA kernels and
// optimizers, fp32 or bf16). Training and `memory --measure` build runs on it alike.
#pragma once
#include <functional>
#include <memory>

#include "backend.hpp"
#include "config.hpp"
#include "error.hpp"
#include "optimizer.hpp"
#include "reference/cpu_ops.hpp"
#include "update_pipeline.hpp"

namespace gpt2 {

template <class T>
struct RunBackend {
  std::unique_ptr<Device> dev;
  std::unique_ptr<Ops<T>> ops;
  std::function<std::unique_ptr<Optimizer<T>>(const ParamTable&)> optimizer;
  std::unique_ptr<GradOps<T>> gops;
  double peak_flops = 0;  // dense peak of the device for MFU; 0 on the CPU (not reported)
  bool cuda = false;
};

// Builds the backend and calls fn(RunBackend<float>&) or fn(RunBackend<bf16>&).
// train.device "auto" means the GPU when one is usable, else the CPU.
template <class Fn>
void with_backend(const json& cfg, int gpu, Fn&& fn) {
  const json& tr = cfg["train"];
  const uint64_t seed = tr["seed"].get<uint64_t>();
  const size_t tensors = ParamTable(model_config(cfg)).params.size();
  const std::string precision = tr["precision"].get<std::string>();
  std::string device = tr["device"].get<std::string>(), why;
  if (device == "auto") device = cuda_usable(&why) ? "cuda" : "cpu";
  if (device == "cpu") {
    if (precision == "bf16")
      fail("train.precision=bf16 needs a GPU, but ", why.empty() ? "train.device is cpu" : why,
           "; set train.precision=auto or fp32 to train on the CPU");
    RunBackend<float> be;
    be.dev = std::make_unique<CpuDevice>();
    be.ops = std::make_unique<CpuOps>();
    be.optimizer = [&cfg, &be, seed](const ParamTable& t) {
      return make_optimizer(cfg, t, *be.dev, seed);
    };
    be.gops = std::make_unique<CpuGradOps>(tensors);
    return fn(be);
  }
  auto gpu_backend = [&](auto& be, double peak) {
    using T = typename std::remove_reference_t<decltype(*be.ops)>::Elem;
    be.dev = make_cuda_device(gpu);
    be.ops = make_cuda_ops<T>(*be.dev);
    be.optimizer = [&cfg, &be, seed](const ParamTable& t) {
      return make_cuda_optimizer<T>(cfg, t, *be.dev, seed);
    };
    be.gops = make_cuda_grad_ops<T>(tensors, *be.dev);
    be.peak_flops = peak;
    be.cuda = true;
    fn(be);
  };
  // H100/H200 SXM dense peaks: bf16 tensor cores 989 TFLOP/s, fp32 without TF32 67.
  if (precision == "fp32") {
    RunBackend<float> be;
    return gpu_backend(be, 67e12);
  }
  RunBackend<bf16> be;
  gpu_backend(be, 989e12);
}

}  // namespace gpt2

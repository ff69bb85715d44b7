// Stand-ins for kernels/cuda_device.cu and kernels/cuda_ops.cu in a build without CUDA.
#ifndef TRAIN_GPT2_CUDA
#include "backend.hpp"
#include "comm.hpp"
#include "error.hpp"
#include "update_pipeline.hpp"

namespace gpt2 {

bool cuda_usable(std::string* why) {
  if (why) *why = "built without CUDA";
  return false;
}

int cuda_device_count(std::string* why) {
  if (why) *why = "built without CUDA";
  return 0;
}

std::unique_ptr<Device> make_cuda_device(int) {
  fail("this build has no CUDA support (rebuild on a machine with nvcc, or set train.device=cpu)");
}

template <class T>
std::unique_ptr<Ops<T>> make_cuda_ops(Device&) {
  fail("this build has no CUDA kernels (rebuild on a machine with nvcc, or set train.device=cpu)");
}
template std::unique_ptr<Ops<float>> make_cuda_ops<float>(Device&);
template std::unique_ptr<Ops<bf16>> make_cuda_ops<bf16>(Device&);

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_optimizer(const json&, const ParamTable&, Device&,
                                                  uint64_t) {
  fail("this build has no CUDA kernels (rebuild on a machine with nvcc, or set train.device=cpu)");
}
template std::unique_ptr<Optimizer<float>> make_cuda_optimizer<float>(const json&,
                                                                      const ParamTable&, Device&,
                                                                      uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_optimizer<bf16>(const json&,
                                                                    const ParamTable&, Device&,
                                                                    uint64_t);

template <class T>
std::unique_ptr<GradOps<T>> make_cuda_grad_ops(size_t, Device&) {
  fail("this build has no CUDA kernels (rebuild on a machine with nvcc, or set train.device=cpu)");
}
template std::unique_ptr<GradOps<float>> make_cuda_grad_ops<float>(size_t, Device&);
template std::unique_ptr<GradOps<bf16>> make_cuda_grad_ops<bf16>(size_t, Device&);

// Without the kernels there is nothing to size them by: a GPU plan in this build counts
// cuBLASLt's workspace alone, and says so.
PlanGpu plan_gpu() {
  PlanGpu g;
  g.note = "built without CUDA: GPU workspace counts cuBLASLt's alone, not the kernels' "
           "scratch, gradient norms' partials or the optimizer's workspace";
  return g;
}
size_t cuda_kernel_scratch_bytes(const ModelConfig&, int, int, const PlanGpu&) { return 0; }
size_t cuda_grad_ops_workspace_bytes(size_t) { return 0; }
size_t cuda_optimizer_workspace_bytes(const json&, const ParamTable&, const PlanGpu&) { return 0; }

std::unique_ptr<Comm> make_nccl_comm(const LaunchEnv& env, uint64_t, double, Device&) {
  fail("WORLD_SIZE=", env.world_size, " (", env.launcher, " launch) needs NCCL, but this build ",
       "has no CUDA support: rebuild on a machine with nvcc, or run one process");
}

}  // namespace gpt2
#endif

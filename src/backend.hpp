// Which compute backends this build and machine have.
#pragma once
#include <memory>
#include <string>

#include "config.hpp"
#include "dtype.hpp"
#include "memory.hpp"
#include "ops.hpp"
#include "optimizer.hpp"

namespace gpt2 {

// True if this build has CUDA and a GPU answers; otherwise false and *why says why
// ("built without CUDA", "no CUDA driver: ...", "no GPU").
bool cuda_usable(std::string* why);
// How many GPUs answer (0, and *why says why, when none is usable).
int cuda_device_count(std::string* why);
// The GPU device for `rank` (Error if unusable).
std::unique_ptr<Device> make_cuda_device(int gpu);

// The CUDA kernels (kernels/cuda_ops.cu) for T = float or bf16 on a CUDA `dev`, which
// also holds their cuBLASLt workspace and scratch (MemCategory::workspace).
template <class T>
std::unique_ptr<Ops<T>> make_cuda_ops(Device& dev);
// The cuBLASLt workspace make_cuda_ops allocates: what cuBLASLt's Hopper kernels ask for.
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

template <class T> class GradOps;

// The CUDA optimizers (kernels/<name>.cu): the same algorithms as the CPU references,
// state on `dev` (MemCategory::optimizer_state, scratch under workspace).
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_optimizer(const json& cfg, const ParamTable& table,
                                                  Device& dev, uint64_t seed);
// The update pipeline's gradient arithmetic on the GPU, for `slots` tensors.
template <class T>
std::unique_ptr<GradOps<T>> make_cuda_grad_ops(size_t slots, Device& dev);

}  // namespace gpt2

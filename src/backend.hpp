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

// Whether CudaOps stores layernorm outputs of width C as ones-padded rows (Ops::pads_rows,
// src/ops.hpp): where C is a multiple of 8, so that the padded rows stay 16-byte aligned
// for the vector kernels and cuBLASLt. Here, for the memory plan too.
inline bool cuda_pads_rows(int C) { return C % 8 == 0; }

// The GPU that the device-dependent workspace sizes below are computed for: this
// process's first GPU when one answers; otherwise (`memory` on a machine without one) an
// assumed H100/H200, whose 132 SMs size the factored optimizers' sweep partials. `note`
// says which, for the memory table.
struct PlanGpu {
  bool present = false;  // a GPU answered: every size below is its own
  int sms = 132;         // streaming multiprocessors (Factored::shape, kernels/factored.cuh)
  std::string note;
};
PlanGpu plan_gpu();

// What the CUDA backend files under MemCategory::workspace besides cuBLASLt's workspace,
// each from the function its allocation site calls (kernels/), so `train_gpt2 memory`
// matches a GPU run's ledger by construction:
// CudaOps's kernel scratch once a training step of batch B x T has run: the largest need
// of the backward calls src/gpt2.cpp makes. Without a GPU the encoder's term is left out:
// CUB sizes its radix-sort storage (about 20 bytes per token with the index arrays) only
// on a device, and it is the largest only past about 100 x C tokens.
size_t cuda_kernel_scratch_bytes(const ModelConfig& cfg, int B, int T, const PlanGpu& gpu);
// CudaGradOps's first-stage partials and per-tensor squared norms, for `slots` tensors.
size_t cuda_grad_ops_workspace_bytes(size_t slots);
// The CUDA optimizer's partial sums, factors, tickets and scalar slots (Adapprox: also its
// V_t scratch and thin S-RSI buffers, but not cuSOLVER's work, whose size only a cuSOLVER
// handle on a GPU can tell).
size_t cuda_optimizer_workspace_bytes(const json& cfg, const ParamTable& table,
                                      const PlanGpu& gpu);

// The CUDA optimizers (kernels/<name>.cu): the same algorithms as the CPU references,
// state on `dev` (MemCategory::optimizer_state, scratch under workspace).
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_optimizer(const json& cfg, const ParamTable& table,
                                                  Device& dev, uint64_t seed);
// The update pipeline's gradient arithmetic on the GPU, for `slots` tensors.
template <class T>
std::unique_ptr<GradOps<T>> make_cuda_grad_ops(size_t slots, Device& dev);

}  // namespace gpt2

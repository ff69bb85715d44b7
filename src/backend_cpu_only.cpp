// Stand-ins for kernels/cuda_device.cu in a build without CUDA.
#ifndef TRAIN_GPT2_CUDA
#include "backend.hpp"
#include "error.hpp"

namespace gpt2 {

bool cuda_usable(std::string* why) {
  if (why) *why = "built without CUDA";
  return false;
}

std::unique_ptr<Device> make_cuda_device(int) {
  fail("this build has no CUDA support (rebuild on a machine with nvcc, or set train.device=cpu)");
}

}  // namespace gpt2
#endif

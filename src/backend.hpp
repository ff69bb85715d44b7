// Which compute backends this build and machine have.
#pragma once
#include <memory>
#include <string>

#include "memory.hpp"

namespace gpt2 {

// True if this build has CUDA and a GPU answers; otherwise false and *why says why
// ("built without CUDA", "no CUDA driver: ...", "no GPU").
bool cuda_usable(std::string* why);
// The GPU device for `rank` (Error if unusable).
std::unique_ptr<Device> make_cuda_device(int gpu);

}  // namespace gpt2

// Checkpoints are two files per step in the checkpoint dir:
//   model_<step, 8 digits>.bin  llm.c's model file, so llm.c (and its tools) read our
//                               models and we start from theirs:
//                               256 int32 header, then the parameter buffer verbatim
//                               (ParamTable order, wte padded to Vp rows).
//   state_<step, 8 digits>.bin  everything else a resume needs, in our own format
//                               (layout in checkpoint.cpp), ending in an FNV-1a 64
//                               checksum so a damaged file is refused, not half-used.
// Both are written atomically, so a crash mid-save leaves the previous pair intact.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "memory.hpp"
#include "optimizer.hpp"
#include "param_table.hpp"

namespace gpt2 {

constexpr int32_t kModelMagic = 20240326;
constexpr int32_t kModelVersionF32 = 3;
constexpr int32_t kModelVersionBF16 = 5;

// Writes `count` (== ParamTable(cfg).total) host floats; dtype bf16 rounds each to
// nearest even, as llm.c's bf16 models are stored.
void save_model(const std::string& path, const ModelConfig& cfg, const float* params,
                size_t count, DType dtype);

struct ModelFile {
  ModelConfig cfg;
  DType dtype;                // what the file stored; params are widened to fp32
  std::vector<float> params;  // ParamTable(cfg).total values
};

// Validates magic, version, header consistency and the exact file size the header
// implies; each problem is one Error naming the file.
ModelFile load_model(const std::string& path);

// Error naming `path` and every field where the file's shape differs from `want`,
// with the config key that sets it.
void check_model_matches(const ModelFile& m, const ModelConfig& want, const std::string& path);

struct TrainState {
  int64_t step = 0;             // steps completed
  uint64_t config_hash = 0;     // caller's hash of the settings a resume must not change
  std::vector<uint8_t> loader;  // data loader position, opaque here
  std::vector<uint64_t> rng;    // generator words, opaque here
};

// Blob data live in `dev`'s memory (the optimizer allocates its state there); they are
// staged through a small host buffer, so saving never holds a host copy of the state.
void save_train_state(const std::string& path, const TrainState& s,
                      const std::vector<StateBlob>& blobs, Device& dev);

// Fills `blobs` in place from the file. The whole file is checked first (structure,
// checksum, every blob's name and size in order), so on any Error no blob is touched.
TrainState load_train_state(const std::string& path, const std::vector<StateBlob>& blobs,
                            Device& dev);

// "<dir>/model_00000100.bin" for step 100; its twin is state_checkpoint_path.
std::string model_checkpoint_path(const std::string& dir, int64_t step);
std::string state_checkpoint_path(const std::string& dir, int64_t step);

// The model file of the highest step in `dir` whose model and state files both exist
// ("" when there is none, or no such dir). A pair missing its state file is a save cut
// short between the two renames and is skipped.
std::string latest_checkpoint(const std::string& dir);
// The state file belonging to a model file named by model_checkpoint_path.
std::string state_path_for(const std::string& model_path);

// FNV-1a 64 continued from `h` over `bytes` bytes (start with kFnvOffset).
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
uint64_t fnv1a64(const void* data, size_t bytes, uint64_t h = kFnvOffset);

}  // namespace gpt2

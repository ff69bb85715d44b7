#include "checkpoint.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "atomic_file.hpp"
#include "error.hpp"
#include "shard.hpp"

namespace gpt2 {

namespace fs = std::filesystem;

namespace {

// Host staging for conversions and device copies: big enough that fwrite/fread and
// cudaMemcpy run at full speed, small enough to never matter in the memory report.
constexpr size_t kStageBytes = size_t(4) << 20;

// Training-state file, version 1 (all fields little-endian, as the machines we run on):
//   uint64 header[8]: magic "GPT2STAT", version, step, config_hash, loader bytes,
//                     rng words, blob count, 0
//   loader bytes, rng words (uint64 each)
//   per blob: uint64 name length, name, uint64 data bytes, data
//   uint64 FNV-1a 64 of every byte before it
constexpr uint64_t kStateMagic = 0x5441545332545047ull;  // "GPT2STAT" read little-endian
constexpr uint64_t kStateVersion = 1;
constexpr uint64_t kStateHeaderBytes = 8 * sizeof(uint64_t);
// llm.c's own state file (a different layout that we do not read) uses this magic.
constexpr int32_t kLlmcStateMagic = 20240527;

using FilePtr = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

FilePtr open_read(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot open ", path, ": ", std::strerror(errno));
  return FilePtr(f, std::fclose);
}

uint64_t regular_file_size(std::FILE* f, const std::string& path) {
  struct stat st;
  if (fstat(fileno(f), &st) != 0) fail("cannot stat ", path, ": ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, " is not a regular file");
  return uint64_t(st.st_size);
}

void seek(std::FILE* f, uint64_t offset, const std::string& path) {
  if (fseeko(f, off_t(offset), SEEK_SET) != 0)
    fail("cannot seek to offset ", offset, " in ", path, ": ", std::strerror(errno));
}

// Names the kind of file a foreign magic belongs to, so "wrong file" errors say what
// the user actually passed.
std::string known_magic(const uint8_t* first8, uint64_t size) {
  int32_t m32;
  std::memcpy(&m32, first8, 4);
  if (m32 == kModelMagic) return " (a llm.c model file)";
  if (m32 == kShardMagic) return " (a llm.c token shard)";
  if (m32 == kLlmcStateMagic) return " (a llm.c training-state file, which this program does not read)";
  uint64_t m64;
  if (size >= 8 && (std::memcpy(&m64, first8, 8), m64 == kStateMagic))
    return " (a training-state file)";
  return "";
}

struct HeaderField {
  const char* name;
  int ModelConfig::*member;
  int index;          // in llm.c's int32 header
  const char* key;    // the config key that sets it
};
constexpr HeaderField kHeaderFields[] = {
    {"max_seq_len", &ModelConfig::max_seq_len, 2, "model.max_seq_len"},
    {"vocab_size", &ModelConfig::vocab_size, 3, "model.vocab_size"},
    {"num_layers", &ModelConfig::num_layers, 4, "model.depth"},
    {"num_heads", &ModelConfig::num_heads, 5, "model.heads"},
    {"channels", &ModelConfig::channels, 6, "model.channels"},
    {"padded_vocab_size", &ModelConfig::padded_vocab_size, 7, "model.padded_vocab_size"},
};

// ParamTable(cfg).total without building the table (a corrupt header could ask for
// billions of tensors): wte Vp*C, wpe T*C, per layer 12C^2 + 13C, lnf 2C. Returns 0 if
// the count would not fit in memory anyway.
uint64_t param_count(const ModelConfig& c) {
  const double C = c.channels, approx = double(c.padded_vocab_size) * C +
                                        double(c.max_seq_len) * C +
                                        double(c.num_layers) * (12 * C * C + 13 * C) + 2 * C;
  if (approx > 1e17) return 0;
  const uint64_t Ci = uint64_t(c.channels);
  return uint64_t(c.padded_vocab_size) * Ci + uint64_t(c.max_seq_len) * Ci +
         uint64_t(c.num_layers) * (12 * Ci * Ci + 13 * Ci) + 2 * Ci;
}

std::string hex(uint64_t v) {
  char s[24];
  std::snprintf(s, sizeof s, "0x%016" PRIx64, v);
  return s;
}

// Everything written to the state file goes through put(), so the checksum covers it.
struct HashedWriter {
  std::FILE* f;
  const std::string& path;
  uint64_t hash = kFnvOffset;
  void put(const void* data, size_t bytes) {
    hash = fnv1a64(data, bytes, hash);
    write_all(f, data, bytes, path);
  }
  void put_u64(uint64_t v) { put(&v, sizeof v); }
};

struct BlobExtent {
  std::string name;
  uint64_t offset, bytes;
};

}  // namespace

uint64_t fnv1a64(const void* data, size_t bytes, uint64_t h) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

void save_model(const std::string& path, const ModelConfig& cfg, const float* params,
                size_t count, DType dtype) {
  const size_t total = ParamTable(cfg).total;
  if (count != total)
    fail("cannot save model ", path, ": got ", count, " parameters but the model has ", total);
  int32_t header[256] = {};
  header[0] = kModelMagic;
  header[1] = dtype == DType::f32 ? kModelVersionF32 : kModelVersionBF16;
  for (const HeaderField& h : kHeaderFields) header[h.index] = cfg.*h.member;
  write_file_atomic(path, [&](std::FILE* f) {
    write_all(f, header, sizeof header, path);
    if (dtype == DType::f32) return write_all(f, params, count * sizeof(float), path);
    std::vector<bf16> stage(kStageBytes / sizeof(bf16));
    for (size_t at = 0; at < count; at += stage.size()) {
      const size_t n = std::min(stage.size(), count - at);
      for (size_t i = 0; i < n; i++) stage[i] = float_to_bf16(params[at + i]);
      write_all(f, stage.data(), n * sizeof(bf16), path);
    }
  });
}

ModelFile load_model(const std::string& path) {
  FilePtr file = open_read(path);
  std::FILE* f = file.get();
  const uint64_t size = regular_file_size(f, path);
  int32_t header[256] = {};
  if (size < 8)
    fail(path, " is not a llm.c model file: it holds only ", size, " bytes");
  read_all(f, header, 8, path);
  if (header[0] != kModelMagic)
    fail(path, " is not a llm.c model file: it starts with ", header[0],
         known_magic(reinterpret_cast<const uint8_t*>(header), size),
         " where a model file has magic ", kModelMagic);
  if (size < sizeof header)
    fail("model file ", path, " is truncated: ", size, " bytes, less than its ",
         sizeof header, "-byte header");
  read_all(f, header + 2, sizeof header - 8, path);

  ModelFile m;
  if (header[1] == kModelVersionF32) m.dtype = DType::f32;
  else if (header[1] == kModelVersionBF16) m.dtype = DType::bf16;
  else
    fail("model file ", path, " has version ", header[1], "; this program reads version ",
         kModelVersionF32, " (fp32) and ", kModelVersionBF16,
         " (bf16): re-export it with a current llm.c");
  for (const HeaderField& h : kHeaderFields) {
    if (header[h.index] <= 0)
      fail("model file ", path, " has ", h.name, " ", header[h.index], " (header[", h.index,
           "]); it must be positive, so the header is corrupt");
    m.cfg.*h.member = header[h.index];
  }
  if (m.cfg.channels % m.cfg.num_heads != 0)
    fail("model file ", path, " has channels ", m.cfg.channels,
         ", not divisible by num_heads ", m.cfg.num_heads, "; the header is corrupt");
  if (m.cfg.padded_vocab_size < m.cfg.vocab_size)
    fail("model file ", path, " has padded_vocab_size ", m.cfg.padded_vocab_size,
         " smaller than vocab_size ", m.cfg.vocab_size, "; the header is corrupt");

  const uint64_t count = param_count(m.cfg);
  const uint64_t want = sizeof header + count * dtype_size(m.dtype);
  if (count == 0 || size != want)
    fail("model file ", path, " is ", size, " bytes but its header (", m.cfg.num_layers,
         " layers, ", m.cfg.channels, " channels, vocab ", m.cfg.padded_vocab_size,
         ", seq ", m.cfg.max_seq_len, ", ", dtype_name(m.dtype), ") implies ",
         count ? cat(want, " bytes") : std::string("more than 100 PB"),
         size < want || count == 0 ? ": the file is truncated" : ": the file has trailing bytes");

  m.params.resize(count);
  if (m.dtype == DType::f32) {
    read_all(f, m.params.data(), count * sizeof(float), path);
  } else {
    std::vector<bf16> stage(kStageBytes / sizeof(bf16));
    for (size_t at = 0; at < count; at += stage.size()) {
      const size_t n = std::min<size_t>(stage.size(), count - at);
      read_all(f, stage.data(), n * sizeof(bf16), path);
      for (size_t i = 0; i < n; i++) m.params[at + i] = bf16_to_float(stage[i]);
    }
  }
  return m;
}

void check_model_matches(const ModelFile& m, const ModelConfig& want, const std::string& path) {
  std::string diffs;
  for (const HeaderField& h : kHeaderFields) {
    if (m.cfg.*h.member == want.*h.member) continue;
    diffs += cat(diffs.empty() ? "" : ", ", h.name, " ", m.cfg.*h.member,
                 " but the config asks for ", want.*h.member, " (", h.key, ")");
  }
  if (!diffs.empty())
    fail("model file ", path, " has ", diffs,
         "; set the config to match the file or start from a matching model");
}

void save_train_state(const std::string& path, const TrainState& s,
                      const std::vector<StateBlob>& blobs, Device& dev) {
  write_file_atomic(path, [&](std::FILE* f) {
    HashedWriter w{f, path};
    const uint64_t header[8] = {kStateMagic,   kStateVersion,      uint64_t(s.step),
                                s.config_hash, s.loader.size(),    s.rng.size(),
                                blobs.size(),  0};
    w.put(header, sizeof header);
    w.put(s.loader.data(), s.loader.size());
    w.put(s.rng.data(), s.rng.size() * sizeof(uint64_t));
    std::vector<uint8_t> stage(kStageBytes);
    for (const StateBlob& b : blobs) {
      w.put_u64(b.name.size());
      w.put(b.name.data(), b.name.size());
      w.put_u64(b.bytes);
      for (size_t at = 0; at < b.bytes; at += stage.size()) {
        const size_t n = std::min(stage.size(), b.bytes - at);
        dev.to_host(stage.data(), static_cast<const uint8_t*>(b.data) + at, n);
        w.put(stage.data(), n);
      }
    }
    const uint64_t checksum = w.hash;
    write_all(f, &checksum, sizeof checksum, path);
  });
}

TrainState load_train_state(const std::string& path, const std::vector<StateBlob>& blobs,
                            Device& dev) {
  FilePtr file = open_read(path);
  std::FILE* f = file.get();
  const uint64_t size = regular_file_size(f, path);
  uint64_t header[8] = {};
  if (size < 8) fail(path, " is not a training-state file: it holds only ", size, " bytes");
  read_all(f, header, 8, path);
  if (header[0] != kStateMagic)
    fail(path, " is not a training-state file: it starts with ", hex(header[0]),
         known_magic(reinterpret_cast<const uint8_t*>(header), size),
         "; pass the state_<step>.bin written beside the model file");
  if (size < kStateHeaderBytes + 8)
    fail("state file ", path, " is truncated: ", size, " bytes, less than its header and checksum");
  read_all(f, header + 1, kStateHeaderBytes - 8, path);
  if (header[1] != kStateVersion)
    fail("state file ", path, " has version ", header[1], " but this build reads version ",
         kStateVersion, "; resume with the build that wrote it or start from the model file");

  // Map the layout without reading payloads, so a length field that points past the
  // end (truncation, corruption) is caught before anything is allocated for it.
  const uint64_t end = size - 8;  // where the checksum sits
  uint64_t at = kStateHeaderBytes;
  auto take = [&](uint64_t count, uint64_t elem, const std::string& what) {
    if (count > (end - at) / elem)
      fail("state file ", path, " is truncated or corrupt: ", what, " needs ", count, " x ",
           elem, " bytes at offset ", at, " but only ", end - at,
           " bytes remain before the checksum");
    const uint64_t start = at;
    at += count * elem;
    return start;
  };
  auto read_u64 = [&](uint64_t offset) {
    uint64_t v;
    seek(f, offset, path);
    read_all(f, &v, sizeof v, path);
    return v;
  };
  const uint64_t loader_at = take(header[4], 1, "the data loader state");
  const uint64_t rng_at = take(header[5], 8, "the RNG state");
  std::vector<BlobExtent> extents;
  for (uint64_t i = 0; i < header[6]; i++) {
    const std::string what = cat("optimizer state #", i);
    const uint64_t name_len = read_u64(take(1, 8, what + "'s name length"));
    take(name_len, 1, what + "'s name");
    std::string name(name_len, '\0');
    read_all(f, name.data(), name.size(), path);
    const uint64_t bytes = read_u64(take(1, 8, what + "'s size"));
    extents.push_back({name, take(bytes, 1, cat(what, " '", name, "'")), bytes});
  }
  if (at != end)
    fail("state file ", path, " has ", end - at,
         " unexpected bytes after its last optimizer state; the file is corrupt");

  seek(f, 0, path);
  uint64_t hash = kFnvOffset, stored;
  {
    std::vector<uint8_t> stage(kStageBytes);
    for (uint64_t pos = 0; pos < end; pos += stage.size()) {
      const size_t n = size_t(std::min<uint64_t>(stage.size(), end - pos));
      read_all(f, stage.data(), n, path);
      hash = fnv1a64(stage.data(), n, hash);
    }
  }
  read_all(f, &stored, sizeof stored, path);
  if (hash != stored)
    fail("state file ", path, " fails its checksum (stored ", hex(stored), ", computed ",
         hex(hash), "): the file is corrupt; resume from an earlier checkpoint");

  if (extents.size() != blobs.size())
    fail("state file ", path, " holds ", extents.size(), " optimizer state blobs but this run's "
         "optimizer has ", blobs.size(), "; was it written with a different optimizer?");
  for (size_t i = 0; i < blobs.size(); i++)
    if (extents[i].name != blobs[i].name || extents[i].bytes != blobs[i].bytes)
      fail("state file ", path, " holds optimizer state #", i, " '", extents[i].name, "' of ",
           extents[i].bytes, " bytes but this run expects '", blobs[i].name, "' of ",
           blobs[i].bytes, " bytes; was it written with a different optimizer or model size?");

  TrainState s;
  s.step = int64_t(header[2]);
  s.config_hash = header[3];
  s.loader.resize(header[4]);
  s.rng.resize(header[5]);
  seek(f, loader_at, path);
  read_all(f, s.loader.data(), s.loader.size(), path);
  seek(f, rng_at, path);
  read_all(f, s.rng.data(), s.rng.size() * sizeof(uint64_t), path);
  std::vector<uint8_t> stage(kStageBytes);
  for (size_t i = 0; i < blobs.size(); i++) {
    seek(f, extents[i].offset, path);
    for (size_t done = 0; done < blobs[i].bytes; done += stage.size()) {
      const size_t n = std::min(stage.size(), blobs[i].bytes - done);
      read_all(f, stage.data(), n, path);
      dev.to_device(static_cast<uint8_t*>(blobs[i].data) + done, stage.data(), n);
    }
  }
  return s;
}

std::string model_checkpoint_path(const std::string& dir, int64_t step) {
  char name[40];
  std::snprintf(name, sizeof name, "model_%08" PRId64 ".bin", step);
  return (fs::path(dir) / name).string();
}

std::string state_checkpoint_path(const std::string& dir, int64_t step) {
  char name[40];
  std::snprintf(name, sizeof name, "state_%08" PRId64 ".bin", step);
  return (fs::path(dir) / name).string();
}

std::string state_path_for(const std::string& model_path) {
  const fs::path p(model_path);
  const std::string name = p.filename().string();
  if (name.rfind("model_", 0) != 0)
    fail(model_path, " is not named model_<step>.bin, so it has no training-state file to resume from");
  return (p.parent_path() / ("state_" + name.substr(6))).string();
}

std::string latest_checkpoint(const std::string& dir) {
  std::error_code ec;
  std::string best;
  int64_t best_step = -1;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    // model_<digits>.bin only: temporaries (".tmp.<pid>") and other files are not checkpoints.
    if (name.size() <= 10 || name.size() > 28 || name.rfind("model_", 0) != 0 ||
        name.compare(name.size() - 4, 4, ".bin") != 0)
      continue;
    const std::string digits = name.substr(6, name.size() - 10);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    const int64_t step = std::stoll(digits);
    if (step > best_step && e.is_regular_file(ec) &&
        fs::is_regular_file(state_path_for(e.path().string()), ec)) {
      best_step = step;
      best = e.path().string();
    }
  }
  return best;
}

}  // namespace gpt2

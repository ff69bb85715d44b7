#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "catch.hpp"
#include "checkpoint.hpp"
#include "error.hpp"

using namespace gpt2;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / cat("test_checkpoint_", getpid());
  TempDir() { fs::remove_all(path), fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// Small enough to write in microseconds, with every dimension distinct so a field
// landing in the wrong header slot or a wrong size formula shows up.
ModelConfig tiny() {
  ModelConfig c;
  c.max_seq_len = 4, c.vocab_size = 10, c.padded_vocab_size = 16;
  c.num_layers = 2, c.num_heads = 2, c.channels = 8;
  return c;
}

std::vector<float> random_params(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> p(n);
  for (float& x : p) x = dist(rng);
  return p;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                               std::streamsize(bytes.size()));
}

// An llm.c header written field by field from llm.c's documented layout, not via
// the code under test.
std::vector<int32_t> llmc_header(const ModelConfig& c, int version) {
  std::vector<int32_t> h(256, 0);
  h[0] = 20240326, h[1] = version, h[2] = c.max_seq_len, h[3] = c.vocab_size;
  h[4] = c.num_layers, h[5] = c.num_heads, h[6] = c.channels, h[7] = c.padded_vocab_size;
  return h;
}

template <class T>
void write_llmc_model(const std::string& path, const std::vector<int32_t>& header,
                      const std::vector<T>& params) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(header.data(), 4, header.size(), f);
  std::fwrite(params.data(), sizeof(T), params.size(), f);
  std::fclose(f);
}

// Counts the files in dir, so a failed write can be shown to leave no temporary.
size_t files_in(const fs::path& dir) {
  return size_t(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}));
}

// A CPU device whose device-to-host copy fails after `budget` bytes: a write that dies
// halfway through a checkpoint.
class FailingDevice final : public Device {
 public:
  size_t budget;
  explicit FailingDevice(size_t b) : budget(b) {}
  bool is_cuda() const override { return false; }
  void to_host(void* host, const void* dev, size_t bytes) override {
    if (bytes > budget) fail("simulated device failure");
    budget -= bytes;
    std::memcpy(host, dev, bytes);
  }
  void to_device(void* dev, const void* host, size_t bytes) override { std::memcpy(dev, host, bytes); }
  void zero(void* dev, size_t bytes) override { std::memset(dev, 0, bytes); }

 protected:
  void* raw_alloc(size_t bytes) override { return std::calloc(1, bytes); }
  void raw_free(void* p) override { std::free(p); }
};

}  // namespace

TEST_CASE("fp32 model round trip is bit exact and sized as ParamTable says") {
  TempDir dir;
  for (ModelConfig c : {tiny(), ModelConfig::from_depth(1)}) {
    if (c.num_layers == 1) c.vocab_size = 50, c.padded_vocab_size = 64, c.max_seq_len = 16;
    const size_t n = ParamTable(c).total;
    std::vector<float> p = random_params(n, 7);
    p[0] = -0.0f, p[1] = 1e-40f, p[2] = std::numeric_limits<float>::infinity();
    const std::string path = dir.file("m.bin");
    save_model(path, c, p.data(), n, DType::f32);
    CHECK(fs::file_size(path) == 1024 + 4 * n);
    ModelFile m = load_model(path);
    CHECK(m.cfg == c);
    CHECK(m.dtype == DType::f32);
    REQUIRE(m.params.size() == n);
    CHECK(std::memcmp(m.params.data(), p.data(), 4 * n) == 0);
  }
}

TEST_CASE("bf16 model stores params rounded to nearest even") {
  TempDir dir;
  const ModelConfig c = tiny();
  const size_t n = ParamTable(c).total;
  std::vector<float> p = random_params(n, 8);
  // Hand-derived bf16 roundings (7 mantissa bits, ulp at 1 is 2^-7):
  p[0] = 1.0f + 0x1p-8f;               // halfway between 1 and 1+2^-7: ties to even 1
  p[1] = 1.0f + 3 * 0x1p-8f;           // halfway between 1+2^-7 and 1+2^-6: ties to even
  p[2] = 1.0f + 0x1p-8f + 0x1p-20f;    // just above halfway: rounds up
  p[3] = -(1.0f + 0x1p-8f + 0x1p-20f);
  const std::string path = dir.file("m.bin");
  save_model(path, c, p.data(), n, DType::bf16);
  CHECK(fs::file_size(path) == 1024 + 2 * n);
  ModelFile m = load_model(path);
  CHECK(m.dtype == DType::bf16);
  CHECK(m.cfg == c);
  CHECK(m.params[0] == 1.0f);
  CHECK(m.params[1] == 1.0f + 0x1p-6f);
  CHECK(m.params[2] == 1.0f + 0x1p-7f);
  CHECK(m.params[3] == -(1.0f + 0x1p-7f));
  for (size_t i = 4; i < n; i++) {
    const float r = bf16_to_float(float_to_bf16(p[i]));
    if (m.params[i] != r) FAIL("param " << i << ": " << m.params[i] << " != " << r);
    // bf16 keeps 8 significant bits: half an ulp is at most 2^-8 of the value.
    if (std::abs(r - p[i]) > std::abs(p[i]) * 0x1p-8f) FAIL("param " << i << " rounded too far");
  }
}

TEST_CASE("model header fields land at llm.c's int32 offsets") {
  TempDir dir;
  const ModelConfig c = tiny();
  const size_t n = ParamTable(c).total;
  const std::vector<float> p = random_params(n, 9);
  for (DType t : {DType::f32, DType::bf16}) {
    const std::string path = dir.file("m.bin");
    save_model(path, c, p.data(), n, t);
    const std::vector<uint8_t> bytes = read_bytes(path);
    REQUIRE(bytes.size() >= 1024 + 4);
    int32_t h[256];
    std::memcpy(h, bytes.data(), sizeof h);
    CHECK(h[0] == 20240326);
    CHECK(h[1] == (t == DType::f32 ? 3 : 5));
    CHECK(h[2] == 4);   // max_seq_len
    CHECK(h[3] == 10);  // vocab_size
    CHECK(h[4] == 2);   // num_layers
    CHECK(h[5] == 2);   // num_heads
    CHECK(h[6] == 8);   // channels
    CHECK(h[7] == 16);  // padded_vocab_size
    for (int i = 8; i < 256; i++) CHECK(h[i] == 0);
    if (t == DType::f32) {
      float first;
      std::memcpy(&first, bytes.data() + 1024, 4);
      CHECK(first == p[0]);  // params start right after the 1024-byte header
    }
  }
}

TEST_CASE("a model file written by hand in llm.c's layout loads") {
  TempDir dir;
  const ModelConfig c = tiny();
  const size_t n = ParamTable(c).total;
  const std::string path = dir.file("llmc.bin");

  std::vector<float> f32(n);
  for (size_t i = 0; i < n; i++) f32[i] = float(i) * 0.5f;
  write_llmc_model(path, llmc_header(c, 3), f32);
  ModelFile m = load_model(path);
  CHECK(m.cfg == c);
  CHECK(m.dtype == DType::f32);
  REQUIRE(m.params.size() == n);
  CHECK(m.params[0] == 0.0f);
  CHECK(m.params[n - 1] == float(n - 1) * 0.5f);

  // bf16 bit patterns: 0x3f80 = 1.0, 0xc000 = -2.0, 0x3e80 = 0.25.
  std::vector<uint16_t> b16(n, 0x3e80);
  b16[0] = 0x3f80, b16[n - 1] = 0xc000;
  write_llmc_model(path, llmc_header(c, 5), b16);
  m = load_model(path);
  CHECK(m.dtype == DType::bf16);
  CHECK(m.params[0] == 1.0f);
  CHECK(m.params[1] == 0.25f);
  CHECK(m.params[n - 1] == -2.0f);
}

TEST_CASE("bad model files each give one Error naming the file") {
  TempDir dir;
  const ModelConfig c = tiny();
  const size_t n = ParamTable(c).total;
  const std::vector<float> p(n, 1.0f);
  const std::string path = dir.file("bad.bin");

  SECTION("wrong magic: a token shard") {
    std::vector<int32_t> h(256, 0);
    h[0] = 20240520, h[1] = 1, h[2] = 3;
    write_llmc_model(path, h, std::vector<uint16_t>{1, 2, 3});
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("not a llm.c model file") &&
                                            Contains("20240520") && Contains("token shard"));
  }
  SECTION("wrong magic: a text file") {
    write_bytes(path, {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("not a llm.c model file"));
  }
  SECTION("empty file") {
    write_bytes(path, {});
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("0 bytes"));
  }
  SECTION("missing file") {
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("cannot open"));
  }
  SECTION("a directory") {
    CHECK_THROWS_WITH(load_model(dir.path.string()), Contains("not a regular file"));
  }
  SECTION("unknown version") {
    write_llmc_model(path, llmc_header(c, 4), p);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("version 4"));
  }
  SECTION("truncated header") {
    std::vector<int32_t> h = llmc_header(c, 3);
    h.resize(100);
    write_llmc_model(path, h, std::vector<float>{});
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("truncated") && Contains("400 bytes"));
  }
  SECTION("truncated params") {
    write_llmc_model(path, llmc_header(c, 3), std::vector<float>(n - 1, 1.0f));
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("truncated") &&
                                            Contains(cat(1024 + 4 * (n - 1), " bytes")) &&
                                            Contains(cat("implies ", 1024 + 4 * n)));
  }
  SECTION("trailing garbage") {
    write_llmc_model(path, llmc_header(c, 5), std::vector<uint16_t>(n + 3, 0));
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("trailing") &&
                                            Contains(cat("implies ", 1024 + 2 * n)));
  }
  SECTION("a bf16 file labelled fp32 has the wrong size") {
    write_llmc_model(path, llmc_header(c, 3), std::vector<uint16_t>(n, 0));
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("truncated"));
  }
  SECTION("channels not divisible by heads") {
    ModelConfig bad = c;
    bad.num_heads = 3;
    write_llmc_model(path, llmc_header(bad, 3), p);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("num_heads 3"));
  }
  SECTION("padded vocab smaller than vocab") {
    ModelConfig bad = c;
    bad.padded_vocab_size = 8;
    write_llmc_model(path, llmc_header(bad, 3), p);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("padded_vocab_size 8"));
  }
  SECTION("non-positive field") {
    ModelConfig bad = c;
    bad.num_layers = 0;
    write_llmc_model(path, llmc_header(bad, 3), p);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("num_layers 0") &&
                                            Contains("header[4]"));
  }
  SECTION("absurd sizes are a size error, not an allocation") {
    ModelConfig bad = c;
    bad.num_layers = 2000000000, bad.channels = 2000000000, bad.num_heads = 1;
    write_llmc_model(path, llmc_header(bad, 3), p);
    CHECK_THROWS_WITH(load_model(path), Contains(path) && Contains("more than 100 PB"));
  }
}

TEST_CASE("check_model_matches names each differing field and its config key") {
  ModelFile m;
  m.cfg = tiny();
  CHECK_NOTHROW(check_model_matches(m, tiny(), "x.bin"));
  ModelConfig want = tiny();
  want.num_layers = 4, want.channels = 16;
  CHECK_THROWS_WITH(check_model_matches(m, want, "x.bin"),
                    Contains("model file x.bin has num_layers 2 but the config asks for 4 (model.depth)") &&
                        Contains("channels 8 but the config asks for 16 (model.channels)") &&
                        !Contains("vocab"));
}

TEST_CASE("FNV-1a 64 matches the published test vectors") {
  CHECK(fnv1a64("", 0) == 0xcbf29ce484222325ull);
  CHECK(fnv1a64("a", 1) == 0xaf63dc4c8601ec8cull);
  CHECK(fnv1a64("foobar", 6) == 0x85944171f73967e8ull);
  CHECK(fnv1a64("bar", 3, fnv1a64("foo", 3)) == 0x85944171f73967e8ull);
}

namespace {

// Optimizer-like state on a device: an empty blob, an odd-sized one, and one larger
// than the 4 MiB staging buffer so the chunked copies are exercised.
struct Blobs {
  Device& dev;
  std::vector<DeviceBuffer<uint8_t>> bufs;
  std::vector<StateBlob> blobs;
  Blobs(Device& d, std::vector<std::pair<std::string, size_t>> shapes) : dev(d) {
    for (auto& [name, bytes] : shapes) {
      bufs.emplace_back(dev, bytes, MemCategory::optimizer_state, name);
      blobs.push_back({name, bufs.back().get(), bytes});
    }
  }
  void fill(uint64_t seed) {  // a 64-bit LCG: cheap, and every seed gives other bytes
    for (auto& b : bufs)
      for (size_t i = 0; i < b.size(); i++)
        b.get()[i] = uint8_t((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 56);
  }
};

const std::vector<std::pair<std::string, size_t>> kShapes = {
    {"adamw.m", 0}, {"adamw.v", 13}, {"adamw.big", (size_t(4) << 20) + 17}};

TrainState sample_state() {
  TrainState s;
  s.step = 1234567890123;
  s.config_hash = 0xfedcba9876543210ull;
  s.loader = {1, 2, 3, 4, 5};
  s.rng = {0x0123456789abcdefull, 42, ~0ull};
  return s;
}

}  // namespace

TEST_CASE("training state round trip restores every blob bit exactly") {
  TempDir dir;
  CpuDevice dev;
  Blobs saved(dev, kShapes), loaded(dev, kShapes);
  saved.fill(1);
  loaded.fill(2);
  const std::string path = dir.file("state.bin");
  save_train_state(path, sample_state(), saved.blobs, dev);
  const TrainState s = load_train_state(path, loaded.blobs, dev);
  CHECK(s.step == 1234567890123);
  CHECK(s.config_hash == 0xfedcba9876543210ull);
  CHECK(s.loader == sample_state().loader);
  CHECK(s.rng == sample_state().rng);
  for (size_t i = 0; i < kShapes.size(); i++)
    CHECK(std::memcmp(saved.bufs[i].get(), loaded.bufs[i].get(), kShapes[i].second) == 0);

  // The layout checkpoint.cpp documents: 64-byte header, loader, rng, then per blob
  // name length + name + size + data, then the checksum of all that.
  const std::vector<uint8_t> bytes = read_bytes(path);
  size_t want = 64 + 5 + 3 * 8 + 8;
  for (auto& [name, n] : kShapes) want += 8 + name.size() + 8 + n;
  CHECK(bytes.size() == want);
  CHECK(std::memcmp(bytes.data(), "GPT2STAT", 8) == 0);
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  CHECK(stored == fnv1a64(bytes.data(), bytes.size() - 8));
}

TEST_CASE("bad training-state files each give one Error naming the file") {
  TempDir dir;
  CpuDevice dev;
  Blobs saved(dev, kShapes), loaded(dev, kShapes);
  saved.fill(3);
  loaded.fill(4);
  const std::string path = dir.file("state.bin");
  save_train_state(path, sample_state(), saved.blobs, dev);
  std::vector<uint8_t> bytes = read_bytes(path);
  const size_t big_data_at = bytes.size() - 8 - kShapes[2].second;

  SECTION("a corrupted payload byte fails the checksum") {
    bytes[big_data_at + 1000] ^= 0x10;
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("checksum"));
  }
  SECTION("a corrupted blob name fails the checksum rather than a name check") {
    bytes[64 + 5 + 24 + 8] ^= 0x01;  // first letter of "adamw.m"
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("checksum"));
  }
  SECTION("truncated") {
    bytes.resize(bytes.size() - 100);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("truncated") && Contains("adamw.big"));
  }
  SECTION("truncated inside the header") {
    bytes.resize(40);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("truncated"));
  }
  SECTION("trailing bytes") {
    bytes.insert(bytes.end() - 8, 5, 0);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("5 unexpected bytes"));
  }
  SECTION("a model file passed as the state file") {
    const ModelConfig c = tiny();
    const std::vector<float> p(ParamTable(c).total, 0.0f);
    save_model(path, c, p.data(), p.size(), DType::f32);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("not a training-state file") &&
                          Contains("llm.c model file"));
  }
  SECTION("unknown version") {
    bytes[8] = 9;
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(load_train_state(path, loaded.blobs, dev),
                      Contains(path) && Contains("version 9"));
  }
  SECTION("a blob of another size") {
    Blobs other(dev, {{"adamw.m", 0}, {"adamw.v", 14}, kShapes[2]});
    CHECK_THROWS_WITH(load_train_state(path, other.blobs, dev),
                      Contains(path) && Contains("'adamw.v' of 13 bytes") &&
                          Contains("'adamw.v' of 14 bytes"));
  }
  SECTION("a blob of another name") {
    Blobs other(dev, {{"adamw.m", 0}, {"came.v", 13}, kShapes[2]});
    CHECK_THROWS_WITH(load_train_state(path, other.blobs, dev),
                      Contains(path) && Contains("'came.v'"));
  }
  SECTION("another number of blobs") {
    Blobs other(dev, {kShapes[0], kShapes[1]});
    CHECK_THROWS_WITH(load_train_state(path, other.blobs, dev),
                      Contains(path) && Contains("holds 3 optimizer state blobs") &&
                          Contains("has 2"));
  }
  // Whatever failed, the run's state was not half-overwritten.
  Blobs fresh(dev, kShapes);
  fresh.fill(4);
  for (size_t i = 0; i < kShapes.size(); i++)
    CHECK(std::memcmp(fresh.bufs[i].get(), loaded.bufs[i].get(), kShapes[i].second) == 0);
}

TEST_CASE("a failed write leaves no file behind and keeps the previous one") {
  TempDir dir;
  const ModelConfig c = tiny();
  const std::vector<float> p(ParamTable(c).total, 0.5f);

  const std::string missing = dir.file("no_such_dir/model.bin");
  CHECK_THROWS_WITH(save_model(missing, c, p.data(), p.size(), DType::f32), Contains(missing));
  CHECK_FALSE(fs::exists(dir.path / "no_such_dir"));

  // A device copy that fails mid-save (after the header and part of the big blob).
  CpuDevice cpu;
  Blobs blobs(cpu, kShapes);
  blobs.fill(5);
  const std::string path = dir.file("state.bin");
  save_train_state(path, sample_state(), blobs.blobs, cpu);
  const std::vector<uint8_t> before = read_bytes(path);
  FailingDevice failing(1000);
  CHECK_THROWS_WITH(save_train_state(path, sample_state(), blobs.blobs, failing),
                    Contains("simulated device failure"));
  CHECK(read_bytes(path) == before);
  CHECK(files_in(dir.path) == 1);

  CHECK_THROWS(save_model(dir.file("m.bin"), c, p.data(), p.size() - 1, DType::f32));
  CHECK(files_in(dir.path) == 1);
}

TEST_CASE("latest_checkpoint picks the highest complete step") {
  TempDir dir;
  const std::string d = dir.path.string();
  CHECK(latest_checkpoint(d) == "");
  CHECK(latest_checkpoint(dir.file("missing")) == "");
  auto touch = [](const std::string& path) { write_bytes(path, {1}); };

  CHECK(model_checkpoint_path(d, 100) == dir.file("model_00000100.bin"));
  CHECK(state_checkpoint_path(d, 100) == dir.file("state_00000100.bin"));
  CHECK(state_path_for(model_checkpoint_path(d, 100)) == state_checkpoint_path(d, 100));
  CHECK_THROWS_WITH(state_path_for("gpt2_124M.bin"), Contains("gpt2_124M.bin"));

  for (int64_t step : {100, 200}) {
    touch(model_checkpoint_path(d, step));
    touch(state_checkpoint_path(d, step));
  }
  touch(model_checkpoint_path(d, 300));             // its state never got written
  touch(state_checkpoint_path(d, 400));             // no model
  touch(dir.file("model_00000500.bin.tmp.123"));    // an interrupted write
  touch(dir.file("model_final.bin"));
  touch(dir.file("state_final.bin"));
  fs::create_directory(dir.path / "model_00000600.bin");
  touch(state_checkpoint_path(d, 600));
  CHECK(latest_checkpoint(d) == model_checkpoint_path(d, 200));

  // Steps compare as numbers, not strings: 100000000 outgrows the 8-digit field.
  for (int64_t step : {99999999, 100000000}) {
    touch(model_checkpoint_path(d, step));
    touch(state_checkpoint_path(d, step));
  }
  CHECK(latest_checkpoint(d) == dir.file("model_100000000.bin"));
}

// End to end through the real GPT-2 tokenizer: needs data/gpt2/ (data/fetch_tokenizer.sh,
// which `make test` runs first).
#include <cmath>
#include <fstream>
#include <vector>

#include "catch.hpp"
#include "error.hpp"
#include "prepare.hpp"
#include "shard.hpp"
#include "temp_dir.hpp"
#include "tokenizer.hpp"

using namespace gpt2;
using Catch::Matchers::Contains;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// All tokens of a split, shards concatenated in order.
std::vector<int> read_split(const std::string& out, const std::string& split) {
  std::vector<int> all;
  for (const std::string& path : glob_shards(out + "/" + split + "_*.bin")) {
    const std::vector<uint16_t> t = read_shard(path);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

// Splits at <|endoftext|>, which must open the stream, and decodes each document.
std::vector<std::string> decode_documents(const Tokenizer& tok, const std::vector<int>& tokens) {
  REQUIRE(!tokens.empty());
  REQUIRE(tokens[0] == kEndOfText);
  std::vector<std::string> docs;
  std::vector<int> current;
  for (size_t i = 1; i <= tokens.size(); i++) {
    if (i == tokens.size() || tokens[i] == kEndOfText) {
      docs.push_back(tok.decode(current));
      current.clear();
    } else {
      current.push_back(tokens[i]);
    }
  }
  return docs;
}

}  // namespace

TEST_CASE("prepare turns documents into shards that decode back to them") {
  TempDir in, out;
  const std::vector<std::string> texts = {
      "The Fulton County Grand Jury said Friday \"no evidence\".\n\nA second paragraph.\n",
      "Short one, with unicode: caf\xc3\xa9 \xe2\x80\x94 na\xc3\xafve.\n",
      "The third document is the validation document.\n"};
  write_text(in / "a.txt", texts[0]);
  write_text(in / "b.txt", texts[1]);
  write_text(in / "c.txt", texts[2]);
  write_text(in / ".hidden", "skipped");
  PrepareOptions o;
  o.inputs = {in.path};
  o.out = out.path;
  o.val_fraction = 0.34;  // 1 of 3 documents: the last, by the even spread
  o.shard_tokens = 7;     // several train shards, documents straddling them
  const PrepareStats s = prepare(o);

  const Tokenizer tok(o.encoder, o.vocab);
  CHECK(decode_documents(tok, read_split(out.path, "train")) == std::vector<std::string>{texts[0], texts[1]});
  CHECK(decode_documents(tok, read_split(out.path, "val")) == std::vector<std::string>{texts[2]});
  CHECK(s.train_documents == 2);
  CHECK(s.val_documents == 1);
  const size_t train_tokens = read_split(out.path, "train").size();
  CHECK(s.train_tokens == train_tokens);
  CHECK(s.train_shards == (train_tokens + 6) / 7);
  const std::vector<std::string> shards = glob_shards(out / "train_*.bin");
  CHECK(shards.size() == s.train_shards);
  for (size_t i = 0; i + 1 < shards.size(); i++) CHECK(read_shard(shards[i]).size() == 7);

  // A second run with bigger shards leaves no stale train_000001.bin behind.
  o.shard_tokens = 100'000;
  prepare(o);
  CHECK(glob_shards(out / "train_*.bin") == std::vector<std::string>{out / "train_000000.bin"});
  CHECK(read_split(out.path, "train").size() == train_tokens);
}

TEST_CASE("val documents are spread evenly, at least one when the fraction is positive") {
  std::vector<size_t> picked;
  for (size_t i = 0; i < 500; i++)
    if (is_val_document(i, 500, 0.05)) picked.push_back(i);
  CHECK(picked.size() == 25);
  CHECK(picked.front() == 19);  // every 20th document
  CHECK(picked[1] == 39);
  CHECK(is_val_document(0, 1, 0.01));
  size_t n = 0;
  for (size_t i = 0; i < 10; i++) n += is_val_document(i, 10, 0.001);
  CHECK(n == 1);
  for (size_t i = 0; i < 10; i++) CHECK_FALSE(is_val_document(i, 10, 0.0));
}

TEST_CASE("prepare rejects bad inputs with one Error naming the flag and value") {
  TempDir in, out;
  write_text(in / "a.txt", "one");
  write_text(in / "b.txt", "two");
  PrepareOptions o;
  o.inputs = {in.path};
  o.out = out.path;
  SECTION("no inputs") {
    o.inputs.clear();
    CHECK_THROWS_WITH(prepare(o), Contains("--input"));
  }
  SECTION("missing input") {
    o.inputs = {in / "missing.txt"};
    CHECK_THROWS_WITH(prepare(o), Contains(in / "missing.txt"));
  }
  SECTION("directory without documents") {
    TempDir empty;
    o.inputs = {empty.path};
    CHECK_THROWS_WITH(prepare(o), Contains(empty.path) && Contains("no documents"));
  }
  SECTION("--val-fraction out of [0, 1)") {
    for (double f : {1.0, -0.1, 2.5, std::nan("")}) {
      o.val_fraction = f;
      CHECK_THROWS_WITH(prepare(o), Contains("--val-fraction"));
    }
  }
  SECTION("--val-fraction leaving no training document") {
    o.val_fraction = 0.9;
    CHECK_THROWS_WITH(prepare(o), Contains("none for training"));
  }
  SECTION("--shard-tokens below 1") {
    o.shard_tokens = 0;
    CHECK_THROWS_WITH(prepare(o), Contains("--shard-tokens 0"));
  }
  CHECK(std::filesystem::is_empty(out.path));  // nothing written
}

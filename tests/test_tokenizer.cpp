// The C++ GPT-2 tokenizer against its oracle, the JS encoder from npm gpt-3-encoder
// (data/gpt2/Encoder.js, run with node once for all texts via tests/js/encode.js):
// Brown corpus sentences and edge cases must give the same ids, and the same U+FFFD
// repair of invalid UTF-8; decode must match the JS decode. Also: malformed tokenizer
// files, a hand-derived BPE on a tiny vocabulary, and the `tokenize` CLI.
// Runs from the repository root (ctest's working directory); needs `make data`-style
// files: data/gpt2/* (data/fetch_tokenizer.sh) and data/brown/text/ (data/fetch_brown.sh).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "catch.hpp"
#include "cli.hpp"
#include "error.hpp"
#include "tokenizer.hpp"
#include "utf8.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using gpt2::Tokenizer;

namespace {

const char* const kEncoder = "data/gpt2/encoder.json";
const char* const kVocab = "data/gpt2/vocab.bpe";

const Tokenizer& gpt2_tokenizer() {
  static const Tokenizer tokenizer(kEncoder, kVocab);
  return tokenizer;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string hex_to_bytes(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

// Printable form of a test text for failure messages.
std::string escaped(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7F) {
      out += char(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out.size() > 200 ? out.substr(0, 200) + "..." : out;
}

struct JsResults {
  std::vector<std::vector<int>> ids;   // encode(text)
  std::vector<std::string> utf8;       // the text as the JS saw it, re-encoded as UTF-8
  std::vector<std::string> decoded;    // decode(id list), as UTF-8
};

JsResults run_js_encoder(const std::vector<std::string>& texts,
                         const std::vector<std::vector<int>>& id_lists) {
  REQUIRE(fs::exists("data/gpt2/Encoder.js"));  // run data/fetch_tokenizer.sh
  REQUIRE(std::system("node --version > /dev/null 2>&1") == 0);  // node is the oracle
  TempDir dir;
  std::string records;
  for (const std::string& text : texts) {
    const uint32_t n = uint32_t(text.size());
    for (int shift = 0; shift < 32; shift += 8) records += char((n >> shift) & 0xFF);
    records += text;
  }
  write_file(fs::path(dir / "texts.bin"), records);
  write_file(fs::path(dir / "ids.json"), nlohmann::json(id_lists).dump());
  const std::string command = "node tests/js/encode.js " + (fs::path(dir / "texts.bin")).string() + " " +
                              (fs::path(dir / "ids.json")).string() + " " +
                              (fs::path(dir / "out.json")).string();
  REQUIRE(std::system(command.c_str()) == 0);
  const auto out = nlohmann::json::parse(read_file(fs::path(dir / "out.json")));
  JsResults results;
  for (const auto& entry : out["encoded"]) {
    results.ids.push_back(entry["ids"].get<std::vector<int>>());
    results.utf8.push_back(hex_to_bytes(entry["utf8"].get<std::string>()));
  }
  for (const auto& hex : out["decoded"]) results.decoded.push_back(hex_to_bytes(hex.get<std::string>()));
  REQUIRE(results.ids.size() == texts.size());
  return results;
}

// 2,000 sentences spread evenly over the whole corpus, so every genre is in.
std::vector<std::string> brown_sentences(size_t count) {
  const fs::path dir = "data/brown/text";
  INFO("Brown corpus text missing: run data/fetch_brown.sh (make test does)");
  REQUIRE(fs::is_directory(dir));
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".txt") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> sentences;
  for (const fs::path& file : files) {
    std::istringstream lines(read_file(file));
    std::string line;
    while (std::getline(lines, line)) {
      size_t start = 0;
      for (size_t i = 0; i < line.size(); i++) {
        const bool end = (line[i] == '.' || line[i] == '?' || line[i] == '!') &&
                         (i + 1 == line.size() || line[i + 1] == ' ');
        if (end) {
          sentences.push_back(line.substr(start, i + 1 - start));
          start = i + 2;
        }
      }
      if (start < line.size()) sentences.push_back(line.substr(start));
    }
  }
  REQUIRE(sentences.size() >= count);
  std::vector<std::string> picked;
  const size_t stride = sentences.size() / count;
  for (size_t i = 0; i < count; i++) picked.push_back(sentences[i * stride]);
  return picked;
}

// Each group is a regex branch or a UTF-8 corner the JS encoder handles in its own way.
std::vector<std::string> edge_cases() {
  return {
      // empty, whitespace runs: \s+(?!\S) leaves the last space to the next word
      "", " ", "   ", "   a", "a   b", "x  ", "\t", "\t\t x", "tab\tsep\tvalues", "\n",
      "\n\n  \n", "a\n\n  \nb", "  \n", "\r\n windows\r\n", "\v\f", "end.\n",
      // contractions, only lowercase ones are split off
      "it's", "don't", "they're", "we've", "I'm", "we'll", "he'd", "IT'S", "DON'T", "He'S",
      "'s", "'ll've", "O'Neil's", "''s", " 's", "rock 'n' roll",
      // digits and numbers in several scripts
      "1", "123", "1234567890123456789", "3.14159", "1,000,000", "x2y3", "\u0663\u0664\u0665",
      "\u216B", "\u00BD", std::string(500, '7'),
      // punctuation, including pairs whose "first,second" key collides in the JS
      "!!!", "...", "?!?!", "---", "((a))", "@#$%^&*", "\"quoted\"", "\",\"", "'\",'\"'", "],[",
      "\"],\"", "',\"", ".\",\"", "}],\"x\"", "a, b,, c,,, d", "',''", "<|endoftext|>",
      // accented Latin, precomposed and with a combining accent (Mn is neither L nor N)
      "caf\u00E9", "na\u00EFve fa\u00E7ade", "\u00C5ngstr\u00F6m", "Z\u00FCrich", "cafe\u0301",
      // CJK, Hangul
      "\u65E5\u672C\u8A9E\u306E\u30C6\u30AD\u30B9\u30C8", "\u4E2D\u6587\u6D4B\u8BD5",
      "\uD55C\uAD6D\uC5B4",
      // emoji: single, skin tone, ZWJ family, flag with variation selector
      "\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
      "\U0001F3F3\uFE0F\u200D\U0001F308", "a\U0001F600b", " \U0001F600 \U0001F600",
      // mixed scripts
      "Hello \u043C\u0438\u0440 \u4E16\u754C \u0645\u0631\u062D\u0628\u0627 \u05E9\u05DC\u05D5\u05DD 123",
      // whitespace where JS and PCRE2 disagree: JS \s has U+FEFF, lacks U+0085 and U+180E
      "\u00A0", "a\u00A0b", "a\u3000b", "x\u2028y", "a\u0085b", "!\u0085!", "a\u180E!", "\uFEFFBOM",
      "x\uFEFF!", "a\uFEFF b", "a\u200Bb", "\u0085's", " \u0085a", "\u180E's", " \uFEFFa",
      // letters and digits newer than PCRE2 10.42's Unicode 14 tables
      "x\U00031350y", " \U0001E4D0\U0001E4D1", "7\U0001E4F0", "\uA7CB\uA7CC", "\U00031350's",
      "\U0001E4D0's", "\U0001E4F0's", "\uA7CB's", "\u0C5C's",
      // control characters
      std::string("\0", 1), "\x01\x02", "\x7F", "a\x1B[0mb",
      // long runs (BPE on one long word; backtracking over long whitespace)
      std::string(3000, 'a'), std::string(1000, ' ') + "x", std::string(2000, '\n'),
      // invalid UTF-8: each maximal invalid subsequence becomes one U+FFFD
      "\x80", "a\x80" "b", "\xBF\xBF", "\xC3", "\xC3x", "\xE2\x82", "\xE2\x82x", "\xF0\x9F\x98",
      "\xF0\x9F\x98 ok", "\xC0\xAF", "\xE0\x80\xAF", "\xF0\x80\x80\xAF", "\xED\xA0\x80",
      "\xED\xBF\xBF", "\xED\xA0\xBD\xED\xB8\x80", "\xF4\x90\x80\x80", "\xF5\x80", "\xFE\xFF",
      "\xFF", "caf\xE9", " \x80 \x80\x80 ", "it\x92s", "\xE2\x28\xA1",
  };
}

bool valid_utf8(const std::string& text) { return gpt2::replace_invalid_utf8(text) == text; }

}  // namespace

TEST_CASE("encode and decode match the JS GPT-2 encoder", "[tokenizer]") {
  const Tokenizer& tokenizer = gpt2_tokenizer();
  REQUIRE(tokenizer.vocab_size() == 50257);
  std::vector<std::string> texts = brown_sentences(2000);
  const size_t brown_count = texts.size();
  for (std::string& text : edge_cases()) texts.push_back(std::move(text));

  // Random id sequences: many split a multi-byte character, exercising decode's repair.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> any_id(0, tokenizer.vocab_size() - 1);
  std::vector<std::vector<int>> id_lists;
  for (int i = 0; i < 300; i++) {
    std::vector<int> ids(1 + i % 8);
    for (int& id : ids) id = any_id(rng);
    id_lists.push_back(ids);
  }

  const JsResults js = run_js_encoder(texts, id_lists);
  size_t tokens = 0, invalid = 0;
  for (size_t i = 0; i < texts.size(); i++) {
    INFO((i < brown_count ? "Brown sentence " : "edge case ") << i << ": \"" << escaped(texts[i]) << "\"");
    const std::vector<int> ids = tokenizer.encode(texts[i]);
    CHECK(ids == js.ids[i]);
    CHECK(gpt2::replace_invalid_utf8(texts[i]) == js.utf8[i]);
    CHECK(tokenizer.decode(ids) == js.utf8[i]);
    if (valid_utf8(texts[i])) CHECK(tokenizer.decode(ids) == texts[i]);
    tokens += ids.size();
    invalid += !valid_utf8(texts[i]);
  }
  CHECK(tokens > 40000);  // guards against the corpus silently shrinking to nothing
  CHECK(invalid >= 20);
  for (size_t i = 0; i < id_lists.size(); i++) {
    INFO("decode of random id list " << i);
    CHECK(tokenizer.decode(id_lists[i]) == js.decoded[i]);
  }
}

TEST_CASE("a few texts encode to ids from openai/gpt-2's published examples", "[tokenizer]") {
  const Tokenizer& tokenizer = gpt2_tokenizer();
  // Well-known ids: "Hello world" is [15496, 995]; "<|endoftext|>" text is not special.
  CHECK(tokenizer.encode("Hello world") == std::vector<int>{15496, 995});
  CHECK(tokenizer.encode("<|endoftext|>") != std::vector<int>{gpt2::kEndOfText});
  CHECK(tokenizer.decode({gpt2::kEndOfText}) == "<|endoftext|>");
}

TEST_CASE("encode is safe to call from several threads", "[tokenizer]") {
  const Tokenizer& tokenizer = gpt2_tokenizer();
  const std::vector<std::string> texts = brown_sentences(400);
  std::vector<std::vector<std::vector<int>>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++)
    threads.emplace_back([&, t] {
      for (const std::string& text : texts) results[t].push_back(tokenizer.encode(text));
    });
  for (auto& thread : threads) thread.join();
  for (int t = 1; t < 4; t++) CHECK(results[t] == results[0]);
}

TEST_CASE("decode rejects ids outside the vocabulary", "[tokenizer]") {
  const Tokenizer& tokenizer = gpt2_tokenizer();
  CHECK_THROWS_AS(tokenizer.decode({50257}), gpt2::Error);
  CHECK_THROWS_WITH(tokenizer.decode({15496, 50257}), Contains("token id 50257") && Contains("0..50256"));
  CHECK_THROWS_WITH(tokenizer.decode({-1}), Contains("token id -1"));
}

namespace {

// GPT-2's ids 0..255 are its 256 byte symbols; a tiny vocabulary adds a few merges.
nlohmann::json byte_symbols() {
  const auto full = nlohmann::json::parse(read_file(kEncoder));
  nlohmann::json bytes = nlohmann::json::object();
  for (const auto& [key, id] : full.items())
    if (id.get<int>() < 256) bytes[key] = id;
  REQUIRE(bytes.size() == 256);
  return bytes;
}

}  // namespace

TEST_CASE("BPE merges by rank on a hand-checked tiny vocabulary", "[tokenizer]") {
  TempDir dir;
  nlohmann::json encoder = byte_symbols();
  encoder["ab"] = 256;
  encoder["abc"] = 257;
  encoder["bc"] = 258;
  write_file(fs::path(dir / "encoder.json"), encoder.dump());
  write_file(fs::path(dir / "vocab.bpe"), "#version: 0.2\na b\nab c\nb c\n");
  const Tokenizer tokenizer((fs::path(dir / "encoder.json")).string(), (fs::path(dir / "vocab.bpe")).string());
  const int a = encoder["a"], b = encoder["b"], c = encoder["c"];
  CHECK(tokenizer.vocab_size() == 259);
  // "abc": (a,b) rank 0 beats (b,c) rank 2, then (ab,c) rank 1 -> abc.
  CHECK(tokenizer.encode("abc") == std::vector<int>{257});
  // "cabc": c stays alone; "bcb": (b,c) then nothing else applies -> bc b.
  CHECK(tokenizer.encode("cabc") == std::vector<int>{c, 257});
  CHECK(tokenizer.encode("bcb") == std::vector<int>{258, b});
  // "aab": the left pair is not a merge; (a,b) merges -> a ab.
  CHECK(tokenizer.encode("aab") == std::vector<int>{a, 256});
  CHECK(tokenizer.decode({c, 257, 258}) == "cabcbc");
}

TEST_CASE("merge ranks are looked up by \"first,second\" like the JS does", "[tokenizer]") {
  // The JS indexes its rank table with a [first, second] array, i.e. by the string
  // "first,second", so the pair ("!", ",?") finds the rank of the merge "!, ?". With
  // these merges "!,?" becomes the single token 257 in Encoder.js (checked with node);
  // a tokenizer keyed by the true pair would give ["!", ",?"].
  TempDir dir;
  nlohmann::json encoder = byte_symbols();
  encoder[",?"] = 256;
  encoder["!,?"] = 257;
  encoder["!,"] = 258;
  write_file(fs::path(dir / "encoder.json"), encoder.dump());
  write_file(fs::path(dir / "vocab.bpe"), "#version: 0.2\n, ?\n!, ?\n! ,\n");
  const Tokenizer tokenizer((fs::path(dir / "encoder.json")).string(), (fs::path(dir / "vocab.bpe")).string());
  CHECK(tokenizer.encode("!,?") == std::vector<int>{257});
  CHECK(tokenizer.encode("!,") == std::vector<int>{258});
  CHECK(tokenizer.encode(",?!") == std::vector<int>{256, encoder["!"].get<int>()});
}

TEST_CASE("malformed tokenizer files give one Error naming the file", "[tokenizer]") {
  TempDir dir;
  const std::string good_vocab = kVocab, good_encoder = kEncoder;
  const std::string bytes_json = (fs::path(dir / "bytes.json")).string();
  write_file(bytes_json, byte_symbols().dump());
  auto file = [&](const std::string& name, const std::string& content) {
    const std::string path = dir / name;
    write_file(path, content);
    return path;
  };

  SECTION("missing files") {
    const std::string missing = (fs::path(dir / "nope.json")).string();
    CHECK_THROWS_WITH(Tokenizer(missing, good_vocab), Contains(missing));
    CHECK_THROWS_WITH(Tokenizer(good_encoder, missing), Contains(missing));
  }
  SECTION("encoder.json problems") {
    const std::string not_json = file("a.json", "{\"a\": 1");
    CHECK_THROWS_WITH(Tokenizer(not_json, good_vocab), Contains(not_json) && Contains("not valid JSON"));
    const std::string array = file("b.json", "[1, 2]");
    CHECK_THROWS_WITH(Tokenizer(array, good_vocab), Contains(array) && Contains("array"));
    const std::string empty = file("c.json", "");
    CHECK_THROWS_WITH(Tokenizer(empty, good_vocab), Contains(empty));
    const std::string string_id = file("d.json", "{\"!\": \"zero\"}");
    CHECK_THROWS_WITH(Tokenizer(string_id, good_vocab), Contains(string_id) && Contains("\"!\"") && Contains("zero"));
    const std::string float_id = file("e.json", "{\"!\": 0.5}");
    CHECK_THROWS_WITH(Tokenizer(float_id, good_vocab), Contains(float_id) && Contains("0.5"));
    const std::string gap = file("f.json", "{\"!\": 0, \"a\": 5}");
    CHECK_THROWS_WITH(Tokenizer(gap, good_vocab), Contains(gap) && Contains("\"a\"") && Contains("id 5"));
    // A plain space is not a byte symbol (GPT-2 writes it as U+0120).
    const std::string space = file("g.json", "{\"a b\": 0}");
    CHECK_THROWS_WITH(Tokenizer(space, good_vocab), Contains(space) && Contains("\"a b\""));
  }
  SECTION("vocab.bpe problems") {
    const std::string empty = file("empty.bpe", "");
    CHECK_THROWS_WITH(Tokenizer(bytes_json, empty), Contains(empty) && Contains("empty"));
    const std::string no_header = file("h.bpe", "a b\n");
    CHECK_THROWS_WITH(Tokenizer(bytes_json, no_header), Contains(no_header) && Contains("line 1"));
    const std::string one = file("one.bpe", "#version: 0.2\nc\n");
    CHECK_THROWS_WITH(Tokenizer(bytes_json, one), Contains(one) && Contains("line 2"));
    const std::string three = file("three.bpe", "#version: 0.2\na b c\n");
    CHECK_THROWS_WITH(Tokenizer(bytes_json, three), Contains(three) && Contains("line 2"));
    const std::string unknown = file("unknown.bpe", "#version: 0.2\na zz\n");
    CHECK_THROWS_WITH(Tokenizer(bytes_json, unknown),
                      Contains(unknown) && Contains("line 2") && Contains("'zz'"));
    // Valid symbols whose merge is not a token: "ab" is not in the byte-only encoder.
    const std::string no_result = file("result.bpe", "#version: 0.2\na b\n");
    CHECK_THROWS_WITH(Tokenizer(bytes_json, no_result),
                      Contains(no_result) && Contains("line 2") && Contains("'ab'"));
  }
  SECTION("the default files missing point at make data") {
    const fs::path here = fs::current_path();
    fs::current_path(dir.path);
    CHECK_THROWS_WITH(gpt2::load_default_tokenizer(), Contains("data/gpt2/encoder.json") && Contains("make data"));
    fs::current_path(here);
  }
}


TEST_CASE("train_gpt2 tokenize prints the library's ids and decodes them back", "[tokenizer]") {
  const Tokenizer& tokenizer = gpt2_tokenizer();
  const std::string text = "It's 2024: caf\u00E9 \U0001F600\n\n  and \xFF bytes.\n";
  std::string expected;
  for (int id : tokenizer.encode(text)) {
    if (!expected.empty()) expected += ' ';
    expected += std::to_string(id);
  }
  const CliRun enc = run_cli("tokenize", text);
  CHECK(enc.out == expected + "\n");
  CHECK(enc.exit_code() == 0);
  const CliRun dec = run_cli("tokenize --decode", expected);
  CHECK(dec.out == gpt2::replace_invalid_utf8(text));
  CHECK(dec.exit_code() == 0);
  const CliRun bad_word = run_cli("tokenize --decode", "15496 x1");
  CHECK_THAT(bad_word.err, Contains("'x1'"));
  CHECK(bad_word.exit_code() == 1);
  const CliRun bad_id = run_cli("tokenize --decode", "99999");
  CHECK_THAT(bad_id.err, Contains("token id 99999"));
  CHECK(bad_id.exit_code() == 1);
}

// `train_gpt2 tokenize`: text on stdin -> GPT-2 token ids on stdout (or back with
// --decode). For checking the tokenizer by hand and against other implementations:
//   echo "Hello world" | build/train_gpt2 tokenize              -> 15496 995 198
//   echo "15496 995" | build/train_gpt2 tokenize --decode       -> Hello world
//   cat data/brown/text/*.txt | build/train_gpt2 tokenize --stats > /dev/null
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>

#include "commands.hpp"
#include "error.hpp"
#include "tokenizer.hpp"

namespace gpt2 {
namespace {

struct TokenizeOptions {
  bool decode = false;
  bool stats = false;
  std::string encoder, vocab;
};

std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

std::vector<int> parse_ids(const std::string& text) {
  std::vector<int> ids;
  std::istringstream words(text);
  std::string word;
  while (words >> word) {
    int id = 0;
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), id);
    if (ec != std::errc() || end != word.data() + word.size())
      fail("tokenize --decode: stdin holds '", word, "', which is not a token id (expected integers separated by spaces)");
    ids.push_back(id);
  }
  return ids;
}

void write_stdout(const std::string& bytes) {
  if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size() || std::fflush(stdout) != 0)
    fail("tokenize: cannot write to stdout");
}

void run_tokenize(const TokenizeOptions& options) {
  const Tokenizer tokenizer =
      options.encoder.empty() && options.vocab.empty()
          ? load_default_tokenizer()
          : Tokenizer(options.encoder.empty() ? "data/gpt2/encoder.json" : options.encoder,
                      options.vocab.empty() ? "data/gpt2/vocab.bpe" : options.vocab);
  const std::string input = read_stdin();
  const auto start = std::chrono::steady_clock::now();
  std::string output;
  size_t tokens = 0;
  if (options.decode) {
    const std::vector<int> ids = parse_ids(input);
    tokens = ids.size();
    output = tokenizer.decode(ids);
  } else {
    const std::vector<int> ids = tokenizer.encode(input);
    tokens = ids.size();
    char number[16];
    for (size_t i = 0; i < ids.size(); i++) {
      if (i > 0) output += ' ';
      output.append(number, std::to_chars(number, number + sizeof number, ids[i]).ptr);
    }
    output += '\n';
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_stdout(output);
  if (options.stats)
    std::fprintf(stderr, "tokenize: %zu bytes, %zu tokens, %.2f MB/s (%s, one thread)\n",
                 options.decode ? output.size() : input.size(), tokens,
                 (options.decode ? output.size() : input.size()) / 1e6 / seconds,
                 options.decode ? "decode" : "encode");
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "GPT-2 BPE: text on stdin -> token ids (space-separated) on stdout");
  cmd->add_flag("--decode", options->decode, "read token ids on stdin and print their text");
  cmd->add_option("--encoder", options->encoder, "encoder.json (default data/gpt2/encoder.json)");
  cmd->add_option("--vocab", options->vocab, "vocab.bpe (default data/gpt2/vocab.bpe)");
  cmd->add_flag("--stats", options->stats, "print bytes, tokens and MB/s to stderr");
  cmd->callback([options] { run_tokenize(*options); });
}

}  // namespace gpt2

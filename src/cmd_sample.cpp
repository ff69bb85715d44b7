// `train_gpt2 sample --model <file> --prompt "..." --tokens N [--temperature t]
//  [--top-k k] [--seed s]`: prints the prompt and its continuation.
#include <cstdio>

#include "checkpoint.hpp"
#include "commands.hpp"
#include "error.hpp"
#include "gpt2.hpp"
#include "reference/cpu_ops.hpp"
#include "sample.hpp"
#include "tokenizer.hpp"

namespace gpt2 {

void add_sample_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("sample", "generate text from a model file");
  static std::string model_path, prompt;
  static SampleOptions opt;
  cmd->add_option("--model", model_path, "llm.c model file (model_*.bin)")->required();
  cmd->add_option("--prompt", prompt, "text to continue (default: start of a document)");
  cmd->add_option("--tokens", opt.tokens, "tokens to generate")->check(CLI::Range(1, 100000));
  cmd->add_option("--temperature", opt.temperature, "softmax temperature (0 = greedy)")
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", opt.top_k, "sample among the k most likely tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", opt.seed, "random seed");
  cmd->callback([] {
    const Tokenizer tok = load_default_tokenizer();
    ModelFile m = load_model(model_path);
    const std::vector<int> ids = tok.encode(prompt);
    // The shortest multiple of 64 that holds prompt and continuation, within the
    // model's context: the CPU forward runs over the whole window for each token.
    const int need = int(ids.size() + 1) + opt.tokens;
    const int T = std::min(m.cfg.max_seq_len, (need + 63) / 64 * 64);
    CpuDevice dev;
    CpuOps ops;
    GPT2<float> model(m.cfg, ops, dev, 1, T, 0);
    model.set_params(m.params);
    const std::vector<int> out = generate(model, ids, opt);
    std::printf("%s\n", tok.decode(out).c_str());
  });
}

}  // namespace gpt2

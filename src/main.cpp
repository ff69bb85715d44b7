// train_gpt2: pretrain GPT-2 with optimizers fused into the backward pass.
// Every failure the user can cause surfaces as a gpt2::Error: one line, exit 1.
#include <cstdio>
#include <exception>

#include "commands.hpp"
#include "error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"train_gpt2: GPT-2 pretraining in C++/CUDA with memory-efficient optimizers"};
  app.require_subcommand(1);
  gpt2::add_config_command(app);
  gpt2::add_memory_command(app);
  gpt2::add_prepare_command(app);
  gpt2::add_train_command(app);
  gpt2::add_sample_command(app);
  gpt2::add_tokenize_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const gpt2::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}

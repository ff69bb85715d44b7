// Each subcommand lives in src/cmd_<name>.cpp and registers itself on the CLI here.
#pragma once
#include <CLI/CLI.hpp>

namespace gpt2 {

void add_config_command(CLI::App& app);
void add_memory_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_sample_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);  // src/cmd_tokenize.cpp

}  // namespace gpt2

// `train_gpt2 config [<file>] [--set key=value]...`: print the resolved config (defaults,
// then the file, then the overrides) as JSON, or the one error that makes it invalid.
// The output is itself a valid config file.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "config.hpp"

namespace gpt2 {

void add_config_command(CLI::App& app) {
  struct Args {
    std::string file;
    std::vector<std::string> overrides;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("config", "Print the resolved run config as JSON");
  cmd->add_option("file", args->file, "JSON run config (omit for the built-in defaults)");
  // One value per --set so that a positional file after the overrides is not swallowed.
  cmd->add_option("--set", args->overrides, "Override one key: --set optimizer.lr=3e-4")
      ->allow_extra_args(false);
  cmd->callback([args] {
    const json cfg = load_config(args->file, args->overrides);
    std::printf("%s\n", cfg.dump(2).c_str());
  });
}

}  // namespace gpt2

// `train_gpt2 train <config.json> [--set key=value]...`
#include "commands.hpp"
#include "train.hpp"

namespace gpt2 {

void add_train_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "pretrain GPT-2 from a JSON config");
  static std::string path;
  static std::vector<std::string> overrides;
  cmd->add_option("config", path, "JSON run config (configs/*.json)")->required();
  cmd->add_option("--set", overrides, "override a config key: --set optimizer.lr=3e-4");
  cmd->callback([] { train(load_config(path, overrides)); });
}

}  // namespace gpt2

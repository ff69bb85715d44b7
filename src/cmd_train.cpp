// `train_gpt2 train <config.json> [--set key=value]... [--gpus N | --ranks N]`
#include "commands.hpp"
#include "launch_ranks.hpp"
#include "train.hpp"

namespace gpt2 {

void add_train_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "pretrain GPT-2 from a JSON config");
  static std::string path;
  static std::vector<std::string> overrides;
  static int gpus = 0, ranks = 0;
  cmd->add_option("config", path, "JSON run config (configs/*.json)")->required();
  cmd->add_option("--set", overrides, "override a config key: --set optimizer.lr=3e-4");
  cmd->add_option("--gpus", gpus, "data parallel on N GPUs of this machine (starts N ranks)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ranks", ranks,
                  "data parallel over N processes of this machine: one per GPU, or CPU "
                  "processes with train.device=cpu (small models, tests)")
      ->check(CLI::PositiveNumber)
      ->excludes("--gpus");
  cmd->callback([] {
    const json cfg = load_config(path, overrides);  // a bad config fails once, here
    if (gpus == 0 && ranks == 0) return train(cfg);
    std::vector<std::string> args = {"train", path};
    for (const std::string& o : overrides) args.insert(args.end(), {"--set", o});
    launch_ranks(gpus ? gpus : ranks, args, gpus > 0);
  });
}

}  // namespace gpt2

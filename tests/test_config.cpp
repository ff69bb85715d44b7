// Run configs: defaults, file and --set merging, and the one-sentence error for each kind
// of bad input (each must name where the value came from, its JSON path and the value).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "cli.hpp"
#include "config.hpp"
#include "error.hpp"

using namespace gpt2;
namespace fs = std::filesystem;

namespace {

// A scratch folder for config files, removed with everything in it.
struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("test_config." + std::to_string(getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() { fs::remove_all(dir); }
  std::string file(const std::string& name, const std::string& text) const {
    const fs::path p = dir / name;
    std::ofstream(p) << text;
    return p.string();
  }
};

std::string error_of(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    load_config(path, overrides);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The message is one line and contains every part (source, JSON path, value, fix...).
void check_error(const std::string& message, const std::vector<std::string>& parts) {
  INFO("message: " << message);
  CHECK(message.find('\n') == std::string::npos);
  for (const std::string& part : parts) {
    INFO("expected part: " << part);
    CHECK(message.find(part) != std::string::npos);
  }
}

// Errors for one JSON file holding `text`.
std::string file_error(const Scratch& s, const std::string& name, const std::string& text) {
  return error_of(s.file(name, text));
}

}  // namespace

TEST_CASE("the defaults load and match kDefaultConfig") {
  const json cfg = load_config("");
  CHECK(cfg == json::parse(kDefaultConfig));
  CHECK(resolved_update(cfg) == "after_backward");
  // from_depth(12) is GPT-2 124M: C = 768, 12 heads.
  const ModelConfig m = model_config(cfg);
  CHECK(m.num_layers == 12);
  CHECK(m.channels == 768);
  CHECK(m.num_heads == 12);
  CHECK(m.vocab_size == 50257);
  CHECK(m.padded_vocab_size == 50304);
}

TEST_CASE("a file overrides only the keys it names") {
  Scratch s;
  const json cfg = load_config(
      s.file("run.json", R"({"optimizer": {"lr": 3e-4, "adamw": {"beta2": 0.99}},
                              "model": {"depth": 4, "heads": 2}})"));
  CHECK(cfg["optimizer"]["lr"].get<double>() == 3e-4);
  CHECK(cfg["optimizer"]["adamw"]["beta2"].get<double>() == 0.99);
  CHECK(cfg["optimizer"]["adamw"]["beta1"].get<double>() == 0.9);  // sibling keeps default
  CHECK(cfg["optimizer"]["name"] == "adamw");
  CHECK(cfg["schedule"]["steps"] == 1000);
  // depth 4 outside the GPT-2 family: C = 64 * 4 (llm.c's rule), heads as given.
  const ModelConfig m = model_config(cfg);
  CHECK(m.num_layers == 4);
  CHECK(m.channels == 256);
  CHECK(m.num_heads == 2);
}

TEST_CASE("--set overrides are typed, nested, and applied after the file in order") {
  Scratch s;
  const std::string path = s.file("run.json", R"({"optimizer": {"lr": 1e-3}})");
  const json cfg = load_config(path, {"optimizer.lr=0.5", "data.shuffle=false",
                                      "optimizer.name=lomo", "train.grad_clip=0",
                                      "sample.prompt=42", "schedule={\"steps\": 50}",
                                      "schedule.warmup_steps=1e1", "train.threads=2",
                                      "train.threads=3", "optimizer.adafactor.beta1=null"});
  CHECK(cfg["optimizer"]["lr"].get<double>() == 0.5);
  CHECK(cfg["data"]["shuffle"] == false);
  CHECK(cfg["optimizer"]["name"] == "lomo");
  CHECK(resolved_update(cfg) == "fused");
  CHECK(cfg["sample"]["prompt"] == "42");  // string keys take the text as it is
  CHECK(cfg["schedule"]["steps"] == 50);
  CHECK(cfg["schedule"]["decay"] == "cosine");  // an object --set merges, keeps the rest
  CHECK(cfg["schedule"]["warmup_steps"].is_number_integer());  // 1e1 is the integer 10
  CHECK(cfg["schedule"]["warmup_steps"] == 10);
  CHECK(cfg["train"]["threads"] == 3);  // the last --set wins
  CHECK(cfg["optimizer"]["adafactor"]["beta1"].is_null());
  CHECK(load_config("", {"optimizer.adafactor.beta1=0.9"})["optimizer"]["adafactor"]["beta1"] ==
        0.9);
}

TEST_CASE("every file in configs/ validates") {
  int count = 0;
  for (const auto& entry : fs::directory_iterator("configs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    CHECK_NOTHROW(load_config(entry.path().string()));
    count++;
  }
  CHECK(count >= 3);
  const json quick = load_config("configs/quickstart.json");
  CHECK(model_config(quick).channels == 128);
  CHECK(quick["data"]["seq_len"] == 64);
  const json big = load_config("configs/gpt2-345m.json");
  CHECK(model_config(big).channels == 1024);
  CHECK(big["train"]["precision"] == "bf16");
  CHECK(recompute_of(big).gelu(24) == 12);  // within llm.c's d24 memory (README)
}

TEST_CASE("unreadable files and malformed --set name the file or the flag") {
  Scratch s;
  // Line 3 holds the stray comma's consequence; nlohmann reports where it noticed it.
  check_error(file_error(s, "broken.json", "{\n  \"optimizer\": {\"lr\": 1e-3,\n  }\n}\n"),
              {"broken.json", "not valid JSON", "line 3"});
  const std::string missing = (s.dir / "missing.json").string();
  check_error(error_of(missing), {missing, "cannot open"});
  check_error(error_of(s.dir.string()), {s.dir.string(), "directory"});
  check_error(error_of("", {"optimizer.lr"}), {"--set optimizer.lr", "key=value"});
  check_error(error_of("", {"=3"}), {"--set =3", "key=value"});
  check_error(file_error(s, "list.json", "[1, 2]"), {"list.json", "object", "[1,2]"});
}

TEST_CASE("unknown keys get a did-you-mean, searching other sections too") {
  Scratch s;
  CHECK(file_error(s, "top.json", R"({"optimzer": {}})") ==
        s.dir.string() + "/top.json: unknown key optimzer; did you mean optimizer?");
  CHECK(file_error(s, "cross.json", R"({"train": {"lr": 0.1}})") ==
        s.dir.string() + "/cross.json: unknown key train.lr; did you mean optimizer.lr?");
  check_error(file_error(s, "nested.json", R"({"optimizer": {"adamw": {"beta_2": 0.9}}})"),
              {"nested.json", "unknown key optimizer.adamw.beta_2", "optimizer.adamw.beta2?"});
  check_error(error_of("", {"data.batchsize=8"}),
              {"--set data.batchsize=8", "data.batchsize", "did you mean data.batch_size?"});
  check_error(error_of("", {"optimizer.lomo.x=1"}),
              {"--set optimizer.lomo.x=1", "optimizer.lomo.x", "takes no keys"});
  check_error(error_of("", {"learning_rate=1"}),
              {"--set learning_rate=1", "learning_rate", "optimizer", "schedule"});
  check_error(error_of("", {"optimizer.lr.x=1"}), {"--set optimizer.lr.x=1", "optimizer.lr"});
}

TEST_CASE("values of the wrong type are rejected with the expected type") {
  Scratch s;
  check_error(file_error(s, "a.json", R"({"model": {"depth": 1.5}})"),
              {"a.json", "model.depth", "an integer", "1.5"});
  check_error(file_error(s, "b.json", R"({"model": {"depth": "3"}})"),
              {"b.json", "model.depth", "an integer", "\"3\""});
  check_error(file_error(s, "c.json", R"({"model": {"depth": 3000000000}})"),
              {"c.json", "model.depth", "3000000000"});
  check_error(file_error(s, "d.json", R"({"optimizer": {"lr": "0.1"}})"),
              {"d.json", "optimizer.lr", "a number", "\"0.1\""});
  check_error(file_error(s, "e.json", R"({"data": {"shuffle": 1}})"),
              {"e.json", "data.shuffle", "true or false", "got 1"});
  check_error(error_of("", {"train.master_weights=0"}),
              {"--set train.master_weights=0", "train.master_weights", "true or false"});
  check_error(file_error(s, "f.json", R"({"optimizer": {"name": 5}})"),
              {"f.json", "optimizer.name", "a string", "got 5"});
  check_error(file_error(s, "g.json", R"({"optimizer": 3})"),
              {"g.json", "optimizer", "an object", "got 3"});
  check_error(file_error(s, "h.json", R"({"optimizer": {"adafactor": {"beta1": "x"}}})"),
              {"h.json", "optimizer.adafactor.beta1", "a number or null", "\"x\""});
}

TEST_CASE("out-of-range values and bad enum choices say what is accepted") {
  Scratch s;
  CHECK(file_error(s, "lr.json", R"({"optimizer": {"lr": -1}})") ==
        s.dir.string() + "/lr.json: optimizer.lr: expected a number > 0, got -1");
  check_error(error_of("", {"optimizer.adamw.beta2=1"}),
              {"--set optimizer.adamw.beta2=1", "optimizer.adamw.beta2", "[0, 1)", "got 1"});
  check_error(error_of("", {"optimizer.came.eps2=0"}), {"optimizer.came.eps2", "> 0", "got 0"});
  check_error(error_of("", {"optimizer.weight_decay=-0.1"}),
              {"optimizer.weight_decay", ">= 0", "-0.1"});
  check_error(error_of("", {"model.depth=0"}), {"model.depth", "an integer >= 1", "got 0"});
  check_error(error_of("", {"data.batch_size=0"}), {"data.batch_size", ">= 1", "got 0"});
  check_error(error_of("", {"schedule.min_lr_fraction=1.5"}),
              {"schedule.min_lr_fraction", "[0, 1]", "1.5"});
  check_error(error_of("", {"train.recompute=3"}), {"train.recompute", "[0, 2]", "got 3"});
  check_error(error_of("", {"train.recompute_layers=-2"}),
              {"train.recompute_layers", ">= -1", "got -2"});
  check_error(error_of("", {"train.recompute_layers=1.5"}),
              {"train.recompute_layers", "integer", "1.5"});
  check_error(error_of("", {"train.classifier_chunk=-8"}),
              {"train.classifier_chunk", ">= 0", "got -8"});
  check_error(error_of("", {"train.threads=-1"}), {"train.threads", "got -1"});
  check_error(error_of("", {"train.zero1=true", "optimizer.name=adalomo"}),
              {"train.zero1", "after_backward", "fused"});
  check_error(error_of("", {"train.late_wte_grad=true", "optimizer.name=adamw"}),
              {"train.late_wte_grad", "\"auto\" (after_backward for adamw)",
               "optimizer.update=fused"});
  check_error(error_of("", {"train.late_wte_grad=true", "optimizer.name=adalomo",
                            "optimizer.update=after_backward"}),
              {"train.late_wte_grad", "optimizer.update: \"after_backward\""});
  CHECK_NOTHROW(load_config("", {"train.late_wte_grad=true", "optimizer.name=adalomo"}));
  check_error(error_of("", {"eval.every=-1"}), {"eval.every", ">= 0", "-1"});
  check_error(error_of("", {"optimizer.adafactor.beta1=1"}),
              {"optimizer.adafactor.beta1", "null or a number in [0, 1)", "got 1"});
  check_error(file_error(s, "decay.json", R"({"schedule": {"decay": "cosinee"}})"),
              {"decay.json", "schedule.decay", "cosine, linear or constant", "\"cosinee\""});
  check_error(error_of("", {"optimizer.name=adam"}),
              {"optimizer.name", "adamw", "adapprox", "\"adam\""});
  for (const char* key : {"optimizer.update", "optimizer.adapprox.denominator", "train.device",
                          "train.precision", "train.nan_policy", "log.progress"}) {
    check_error(error_of("", {std::string(key) + "=bogus"}), {key, "expected one of", "bogus"});
  }
}

TEST_CASE("train.zero1 left at its default shards after_backward updates only") {
  auto zero1 = [](std::vector<std::string> set) {
    return load_config("", set)["train"]["zero1"].get<bool>();
  };
  CHECK(zero1({}));
  CHECK(zero1({"optimizer.name=came"}));
  CHECK_FALSE(zero1({"optimizer.name=adalomo"}));  // update "auto" resolves to fused
  CHECK_FALSE(zero1({"optimizer.name=adamw", "optimizer.update=fused"}));
  CHECK_FALSE(zero1({"train.zero1=false"}));
  CHECK(zero1({"optimizer.name=adalomo", "optimizer.update=after_backward"}));
  // Asked for explicitly, it still contradicts fused updates (next test case's list).
  CHECK_THROWS_WITH(load_config("", {"train.zero1=true", "optimizer.update=fused"}),
                    Catch::Contains("train.zero1") && Catch::Contains("fused"));
}

TEST_CASE("settings that depend on each other are checked together") {
  Scratch s;
  check_error(error_of("", {"data.seq_len=2048"}),
              {"--set data.seq_len=2048", "data.seq_len", "2048", "model.max_seq_len = 1024"});
  check_error(error_of("", {"model.channels=100", "model.heads=3"}),
              {"--set model.channels=100 and --set model.heads=3", "model.channels", "100",
               "model.heads = 3"});
  // heads left at 0 comes from depth 12: 12 heads, and 100 % 12 != 0.
  check_error(error_of("", {"model.channels=100"}), {"model.channels", "model.heads = 12"});
  check_error(error_of("", {"model.padded_vocab_size=50000"}),
              {"model.padded_vocab_size", "50000", "model.vocab_size = 50257"});
  check_error(error_of("", {"schedule.warmup_steps=2000"}),
              {"schedule.warmup_steps", "2000", "schedule.steps = 1000"});
  check_error(error_of("", {"optimizer.adapprox.k_min=2"}),
              {"optimizer.adapprox.k_min", "2", "optimizer.adapprox.k0 = 1"});
  check_error(error_of("", {"optimizer.adapprox.k0=5", "optimizer.adapprox.k_max=4"}),
              {"optimizer.adapprox.k0", "5", "optimizer.adapprox.k_max = 4"});
  CHECK_NOTHROW(load_config("", {"optimizer.adapprox.k0=5", "optimizer.adapprox.k_max=0"}));
}

TEST_CASE("contradictory settings name both sides and the fix") {
  Scratch s;
  const std::string lomo = s.file("lomo.json", R"({"optimizer": {"name": "lomo"},
                                                    "train": {"grad_clip": 0}})");
  check_error(error_of(lomo, {"train.grad_accum_steps=4"}),
              {"lomo.json and --set train.grad_accum_steps=4", "optimizer.update",
               "fused for lomo", "train.grad_accum_steps = 1", "got 4"});
  check_error(error_of("", {"optimizer.update=fused", "train.grad_clip=0",
                            "train.grad_accum_steps=2"}),
              {"--set optimizer.update=fused", "\"fused\"", "grad_accum_steps", "got 2"});
  CHECK_NOTHROW(load_config(lomo, {"optimizer.update=after_backward",
                                   "train.grad_accum_steps=4"}));

  check_error(error_of("", {"optimizer.name=adalomo", "train.grad_clip=1"}),
              {"--set optimizer.name=adalomo", "train.grad_clip = 1",
               "set train.two_pass_clip=true or train.grad_clip=0"});
  // grad_clip's default (null, "auto") clips after_backward updates only, so choosing a
  // fused optimizer alone is a valid config, and its resolved clip is off.
  const json fused = load_config("", {"optimizer.name=adalomo"});
  CHECK(resolved_grad_clip(fused) == 0.0);
  CHECK(resolved_grad_clip(load_config("", {})) == 1.0);
  CHECK_NOTHROW(load_config("", {"optimizer.name=adalomo", "train.grad_clip=1",
                                 "train.two_pass_clip=true"}));
  CHECK_NOTHROW(load_config("", {"optimizer.name=adalomo", "train.grad_clip=0"}));

  check_error(error_of("", {"train.device=cpu", "train.precision=bf16"}),
              {"--set train.precision=bf16", "--set train.device=cpu", "train.precision",
               "\"bf16\"", "\"cpu\""});
  CHECK_NOTHROW(load_config("", {"train.device=cpu", "train.precision=fp32"}));

  check_error(error_of("", {"optimizer.adapprox.cos_guidance=true",
                            "optimizer.adapprox.beta1=0"}),
              {"optimizer.adapprox.cos_guidance", "optimizer.adapprox.beta1 = 0"});
  CHECK_NOTHROW(load_config("", {"optimizer.adapprox.cos_guidance=true"}));

  check_error(file_error(s, "af.json", R"({"optimizer": {"adafactor": {"warmup_init": true}}})"),
              {"af.json", "optimizer.adafactor.warmup_init", "relative_step = false"});
  // relative_step with our warmup/cosine schedule is allowed (optimizers.md 4).
  CHECK_NOTHROW(load_config("", {"optimizer.name=adafactor",
                                 "optimizer.adafactor.relative_step=true",
                                 "optimizer.adafactor.warmup_init=true",
                                 "schedule.warmup_steps=10"}));
}


TEST_CASE("train_gpt2 config prints the resolved config and fails in one line") {
  const CliRun ok = run_cli("config configs/quickstart.json --set optimizer.lr=0.5");
  INFO(ok.err);
  CHECK(ok.exit_code() == 0);
  const json printed = json::parse(ok.out);
  CHECK(printed["optimizer"]["lr"].get<double>() == 0.5);
  CHECK(printed["model"]["depth"] == 4);
  CHECK(printed == load_config("configs/quickstart.json", {"optimizer.lr=0.5"}));

  // --set before the file must not swallow it.
  const CliRun order = run_cli("config --set model.depth=2 configs/quickstart.json");
  CHECK(order.exit_code() == 0);
  CHECK(json::parse(order.out)["checkpoint"]["dir"] == "runs/quickstart");

  const CliRun bad = run_cli("config configs/quickstart.json --set optimizer.lr=-1");
  CHECK(bad.exit_code() == 1);
  CHECK(bad.out.empty());
  CHECK(bad.err == "error: --set optimizer.lr=-1: optimizer.lr: expected a number > 0, got -1\n");
}

// `train_gpt2 train <config.json> [--set key=value]...`
// Reads top to bottom as the whole algorithm: config, device, model, optimizer, data,
// resume, then the loop (eval, sample, checkpoint, step, log), then the final report.
// Under a launcher (src/distributed.hpp) every rank runs this on its own GPU and its own
// slice of the data; only rank 0 prints and writes files.
#include "train.hpp"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include "checkpoint.hpp"
#include "comm.hpp"
#include "dataloader.hpp"
#include "error.hpp"
#include "gpt2.hpp"
#include "report.hpp"
#include "run_backend.hpp"
#include "sample.hpp"
#include "schedule.hpp"
#include "tokenizer.hpp"

namespace gpt2 {

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_sigint(int) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
}

uint64_t fnv1a(const std::string& s) { return fnv1a64(s.data(), s.size()); }

// What must not change across a resume: the model, the optimizer and the batch shape,
// and, when ZeRO-1 splits the optimizer state into `shards` files, their number.
uint64_t resume_hash(const json& cfg, int shards) {
  json key = {cfg["model"], cfg["optimizer"], cfg["data"]["batch_size"],
              cfg["data"]["seq_len"], cfg["train"]["seed"]};
  if (shards > 1) key.push_back(shards);
  return fnv1a(key.dump());
}

// ZeRO-1: rank r > 0 keeps its share of the optimizer state beside rank 0's state file.
std::string shard_path(const std::string& state_path, int rank) {
  return rank == 0 ? state_path : cat(state_path, ".rank", rank);
}

// How long rank 0 waits for the others to arrive (they may still be loading CUDA).
constexpr double kRendezvousTimeoutS = 120;

template <class T>
void train_on(const json& cfg, RunBackend<T>& be, const LaunchEnv& env);

}  // namespace

void train(const json& cfg) {
  const int threads = cfg["train"]["threads"].get<int>();
  if (threads > 0) omp_set_num_threads(threads);
  const LaunchEnv env = launch_env_from([](const char* name) { return std::getenv(name); });
  with_backend(cfg, env.local_rank, [&](auto& be) { train_on(cfg, be, env); });
}

namespace {

template <class T>
void train_on(const json& cfg, RunBackend<T>& be, const LaunchEnv& env) {
  // ---- config
  const json& tr = cfg["train"];
  const int B = cfg["data"]["batch_size"].get<int>(), T_ = cfg["data"]["seq_len"].get<int>();
  const int64_t steps = cfg["schedule"]["steps"].get<int64_t>();
  const uint64_t seed = tr["seed"].get<uint64_t>();
  const std::string out_dir = cfg["checkpoint"]["dir"].get<std::string>();
  Device& dev = *be.dev;

  // ---- ranks: every rank must run the very same resolved config
  std::unique_ptr<Comm> ranks;
  if (env.world_size > 1)
    ranks = be.cuda ? make_nccl_comm(env, fnv1a(cfg.dump()), kRendezvousTimeoutS, dev)
                    : make_host_comm(env, fnv1a(cfg.dump()), kRendezvousTimeoutS);
  Comm& comm = ranks ? *ranks : local_comm();
  const bool lead = comm.rank() == 0;  // prints, logs, samples, checkpoints
  // Every rank: ZeRO-1 ranks write their state shards there too.
  std::filesystem::create_directories(out_dir);

  // ---- model, optimizer, update pipeline
  GPT2<T> model(model_config(cfg), *be.ops, dev, B, T_, recompute_of(cfg),
                tr["classifier_chunk"].get<int>(), tr["late_wte_grad"].get<bool>());
  // ZeRO-1: this rank allocates and updates only its tensors' optimizer state.
  const int shards = tr["zero1"].get<bool>() ? comm.world() : 1;
  std::unique_ptr<Optimizer<T>> opt =
      be.optimizer(shards > 1 ? zero1_shard(model.table, shards, comm.rank()) : model.table);
  UpdatePipeline<T> pipeline(cfg, model, *opt, *be.gops, dev, comm);
  const std::string init_from = cfg["model"]["init_from"].get<std::string>();
  if (init_from.empty()) {
    pipeline.set_weights(init_params(model.table, seed));
  } else {
    ModelFile m = load_model(init_from);
    check_model_matches(m, model.table.cfg, init_from);
    pipeline.set_weights(m.params);
  }
  const Schedule schedule(cfg);

  // ---- data
  DataLoader train_loader(cfg["data"]["train"].get<std::string>(), B, T_, comm.rank(),
                          comm.world(), seed, cfg["data"]["shuffle"].get<bool>());
  const int eval_every = cfg["eval"]["every"].get<int>();
  std::unique_ptr<DataLoader> val_loader;
  if (eval_every > 0)
    val_loader = std::make_unique<DataLoader>(cfg["data"]["val"].get<std::string>(), B, T_,
                                              comm.rank(), comm.world(), seed, false);

  // ---- resume
  int64_t start = 0;
  uint64_t sample_rng = seed;
  if (cfg["checkpoint"]["resume"].get<bool>()) {
    const std::string model_path = latest_checkpoint(out_dir);
    if (model_path.empty()) {
      if (lead) std::printf("resume: no checkpoint in %s, starting from scratch\n", out_dir.c_str());
    } else {
      ModelFile m = load_model(model_path);
      check_model_matches(m, model.table.cfg, model_path);
      pipeline.set_weights(m.params);
      const std::string state_path = shard_path(state_path_for(model_path), shards > 1 ? comm.rank() : 0);
      TrainState st;
      try {
        st = load_train_state(state_path, opt->state(), dev);
      } catch (const Error& e) {
        if (comm.world() == 1) throw;
        // After a crash the likely cause is a change of mode or of ranks, not a bad file.
        fail(e.what(), shards > 1
                           ? " (this run shards the optimizer state, ZeRO-1: it resumes only "
                             "from state shards written by the same number of ranks; a "
                             "checkpoint of a run with train.zero1=false, the default before "
                             "2026-11-26, resumes with train.zero1=false)"
                           : " (this run keeps the whole optimizer state on every rank, "
                             "train.zero1=false: a checkpoint written with ZeRO-1 state shards "
                             "resumes only with train.zero1=true and the same number of ranks)");
      }
      if (st.config_hash != resume_hash(cfg, shards))
        fail(state_path, " was written with a different model/optimizer/batch config",
             shards > 1 ? " or number of ZeRO-1 ranks" : "",
             "; resume with the same config or pick another checkpoint.dir");
      // A ZeRO-1 shard holds its own rank's data position; otherwise rank 0's is derived from.
      train_loader.restore(st.loader, /*from_rank0=*/shards == 1);
      start = st.step;
      if (!st.rng.empty()) sample_rng = st.rng[0];
      if (lead) std::printf("resumed from %s at step %lld\n", model_path.c_str(), (long long)start);
    }
  }
  // Ranks that resumed from different steps (checkpoint.dir not shared between nodes)
  // would run different loops and hang in a collective: all equal iff sum^2 = world * sum of squares.
  if (comm.world() > 1) {
    double s[2] = {double(start), double(start) * double(start)};
    comm.all_reduce_sum(s, 2);
    if (s[0] * s[0] != comm.world() * s[1])
      fail("rank ", comm.rank(), " starts at step ", start, " but the ranks do not agree (mean ",
           s[0] / comm.world(), "): checkpoint.dir (", out_dir,
           ") must show every rank the same checkpoints; put it on a shared filesystem");
  }
  // Every rank holds the same weights and, without ZeRO-1, the same optimizer state, so
  // rank 0's are the run's. With ZeRO-1 every rank writes its state shard first, and rank
  // 0 writes the model file (what resume looks for) only once all shards are on disk.
  auto save_checkpoint = [&](int64_t step) {
    TrainState st{step, resume_hash(cfg, shards), train_loader.state(), {sample_rng}};
    pipeline.share_master();
    if (shards > 1) {
      if (!lead)
        save_train_state(shard_path(state_checkpoint_path(out_dir, step), comm.rank()), st,
                         opt->state(), dev);
      double barrier = 0;
      comm.all_reduce_sum(&barrier, 1);
    }
    if (!lead) return;
    const std::string model_path = model_checkpoint_path(out_dir, step);
    // fp32 when there is an fp32 copy of the weights (CPU, fp32 GPU, bf16 with master
    // weights), so a resume continues bit-exactly; llm.c's bf16 format otherwise.
    const bool exact = !std::is_same_v<T, bf16> || tr["master_weights"].get<bool>();
    save_model(model_path, model.table.cfg, pipeline.weights().data(), model.table.total,
               exact ? DType::f32 : DType::bf16);
    save_train_state(state_checkpoint_path(out_dir, step), st, opt->state(), dev);
    std::printf("saved checkpoint %s\n", model_path.c_str());
  };

  // ---- report what this run is
  std::unique_ptr<RunLog> log;
  if (lead) {
    log = std::make_unique<RunLog>(cfg, start > 0);
    if (comm.world() > 1)
      std::printf("ranks      %d (%s launch), batch %d per rank, %s\n", comm.world(),
                  env.launcher.c_str(), B,
                  shards > 1 ? "optimizer state sharded (ZeRO-1)"
                             : pipeline.fused() ? "gradients all-reduced inside backward"
                                                : "gradients all-reduced (train.zero1=false)");
    log->startup(model.table, dev.ledger(), pipeline.fused());
  }

  std::unique_ptr<Tokenizer> tokenizer;
  auto sample_text = [&]() {
    if (!tokenizer) tokenizer = std::make_unique<Tokenizer>(load_default_tokenizer());
    const json& s = cfg["sample"];
    SampleOptions so{s["tokens"].get<int>(), s["temperature"].get<float>(),
                     s["top_k"].get<int>(), sample_rng};
    const std::vector<int> prompt = tokenizer->encode(s["prompt"].get<std::string>());
    const std::vector<int> out = generate(model, prompt, so);
    sample_rng = fnv1a(std::to_string(sample_rng));  // next sample draws differently
    return tokenizer->decode(out);
  };
  auto val_loss = [&]() {
    val_loader->reset();
    std::vector<int> in(size_t(B) * T_), tg(in.size());
    double sum = 0;
    const int batches = cfg["eval"]["batches"].get<int>();
    for (int i = 0; i < batches; i++) {
      val_loader->next(in.data(), tg.data());
      sum += model.forward(in.data(), tg.data(), 0.0f);
    }
    return comm.mean(sum / batches);
  };

  // ---- the loop
  const double tokens_per_step =
      double(B) * T_ * tr["grad_accum_steps"].get<int>() * comm.world();
  // llm.c's estimate: 6 flops per parameter per token (forward + backward) plus the
  // attention scores, 6 L C T per token, so MFU compares with llm.c's reports.
  const ModelConfig& mc = model.table.cfg;
  const double flops_per_token = 6.0 * model.table.num_parameters() +
                                 6.0 * mc.num_layers * mc.channels * T_;
  std::signal(SIGINT, on_sigint);
  const int sample_every = cfg["sample"]["every"].get<int>();
  const int ckpt_every = cfg["checkpoint"]["every"].get<int>();
  for (int64_t step = start; step < steps; step++) {
    if (eval_every > 0 && step % eval_every == 0) {
      const double v = val_loss();
      if (lead) log->val(step, v);
    }
    if (lead && sample_every > 0 && step > start && step % sample_every == 0)
      log->sample(step, sample_text());
    if (ckpt_every > 0 && step > start && step % ckpt_every == 0) save_checkpoint(step);

    const auto t0 = std::chrono::steady_clock::now();
    const float lr = float(schedule.at(step));
    const typename UpdatePipeline<T>::StepResult r =
        pipeline.step(step + 1, lr, [&](int* in, int* tg) { train_loader.next(in, tg); });
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (lead) {
      std::vector<std::pair<std::string, double>> stats = opt->step_stats();
      // To 0.01 ms, far above the events' resolution (~0.5 us) and the step-to-step spread.
      if (r.update_ms >= 0)
        stats.insert(stats.begin(), {"update_ms", std::round(r.update_ms * 100) / 100});
      log->step(step, steps, r.loss, lr, r.grad_norm, ms, tokens_per_step, flops_per_token,
                be.peak_flops, dev.ledger(), r.skipped, stats);
    }

    // Ranks stop together (a launcher forwards Ctrl-C to each, not at the same step).
    double stop = g_interrupted;
    comm.all_reduce_sum(&stop, 1);
    if (stop > 0) {
      if (lead) std::printf("\ninterrupted at step %lld: saving a checkpoint\n", (long long)step + 1);
      save_checkpoint(step + 1);
      std::signal(SIGINT, SIG_DFL);
      return;
    }
  }
  std::signal(SIGINT, SIG_DFL);

  // ---- the end: final eval, sample, checkpoint, memory peak
  if (eval_every > 0) {
    const double v = val_loss();
    if (lead) log->val(steps, v);
  }
  if (lead && sample_every > 0) log->sample(steps, sample_text());
  save_checkpoint(steps);
  if (lead) log->finish(dev.ledger(), dev.driver_bytes_in_use());
}

}  // namespace

}  // namespace gpt2

// Run configuration: a JSON file checked against kDefaultConfig, which is both the
// defaults and the schema (every key a run may set appears there, with a value of the
// right type). Consumers read the validated JSON directly: cfg["optimizer"]["lr"].
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "param_table.hpp"

namespace gpt2 {

using json = nlohmann::json;

// Keys whose default is null accept null or a number; train.grad_clip null means "auto":
// 1.0 (llm.c's global-norm clip) for after_backward updates, none for fused ones, which
// could only clip with a second backward (train.two_pass_clip). "update": "auto" means fused for
// lomo/adalomo and after_backward otherwise. train.classifier_chunk: rows of B*T whose
// logits exist at once (the classifier runs chunk by chunk); 0 = auto (GPU: the largest
// power of two within 512 MiB of logits, CPU: 256; the GPU rounds a chunk down to a
// multiple of 8). train.zero1: with several ranks, after_backward updates shard the
// optimizer state (ZeRO-1: each tensor's state on one rank, which updates it and sends
// the new weights); fused updates happen inside backward on every rank, so zero1 left at
// its default reads false for them, and an explicit true is an error.
// train.late_wte_grad (fused updates only): the classifier's part of wte's gradient is
// computed at the end of backward from recomputed logits (one more logits matmul per
// step), so wte's gradient lives in activation memory that backward is done with instead
// of a buffer of its own.
// Paths are relative to the working directory.
inline const char* kDefaultConfig = R"json({
  "model": {
    "depth": 12, "channels": 0, "heads": 0,
    "max_seq_len": 1024, "vocab_size": 50257, "padded_vocab_size": 50304,
    "init_from": ""
  },
  "data": {
    "train": "data/brown/train_*.bin", "val": "data/brown/val_*.bin",
    "batch_size": 4, "seq_len": 64, "shuffle": true
  },
  "optimizer": {
    "name": "adamw", "update": "auto", "lr": 6e-4,
    "weight_decay": 0.0, "decay_vectors": false,
    "adamw": {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8},
    "lomo": {},
    "adalomo": {"eps1": 1e-30, "eps2": 1e-3, "clip_threshold": 1.0, "decay_rate": -0.8},
    "adafactor": {"beta1": null, "eps1": 1e-30, "eps2": 1e-3, "clip_threshold": 1.0,
                  "decay_rate": -0.8, "scale_parameter": false, "relative_step": false,
                  "warmup_init": false},
    "came": {"beta1": 0.9, "beta2": 0.999, "beta3": 0.9999, "eps1": 1e-30, "eps2": 1e-16,
             "clip_threshold": 1.0},
    "adapprox": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "clip_threshold": 1.0,
                 "k0": 1, "k_min": 1, "k_max": 0, "rank_divisor": 4, "delta_k": 0, "xi_thr": 1e-2, "rho": 0.9,
                 "l": 2, "p": 5, "cos_guidance": false, "denominator": "rebuilt", "lanes": 8}
  },
  "schedule": {"steps": 1000, "warmup_steps": 0, "decay": "cosine", "min_lr_fraction": 0.0},
  "train": {
    "seed": 1337, "device": "auto", "precision": "auto", "master_weights": true,
    "grad_accum_steps": 1, "grad_clip": null, "grad_clip_value": 0.0, "two_pass_clip": false,
    "recompute": 0, "recompute_layers": -1, "classifier_chunk": 0, "nan_policy": "stop",
    "threads": 0, "zero1": true, "late_wte_grad": false, "cuda_graph": true
  },
  "eval": {"every": 100, "batches": 8},
  "sample": {"every": 0, "tokens": 64, "prompt": "", "temperature": 1.0, "top_k": 40},
  "checkpoint": {"dir": "runs/default", "every": 0, "resume": false},
  "log": {"every": 1, "metrics": "", "progress": "auto"}
})json";

// Loads `path` (or only the defaults when path is empty), merges it over the defaults,
// applies `--set a.b=value` overrides (value parsed as JSON, else taken as a string),
// and validates: unknown keys (with a did-you-mean), wrong types, out-of-range values
// and contradictory settings each throw one Error naming the file, JSON path and value.
json load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The model shape of a validated config: model.channels / model.heads of 0 take
// ModelConfig::from_depth(model.depth)'s value; vocab sizes and max_seq_len are copied.
ModelConfig model_config(const json& cfg);

// train.recompute and train.recompute_layers of a validated config.
Recompute recompute_of(const json& cfg);

// optimizer.update with "auto" resolved: "fused" for lomo/adalomo, else "after_backward".
std::string resolved_update(const json& cfg);

// train.grad_clip with null resolved: 1.0 after_backward, 0 (off) fused.
double resolved_grad_clip(const json& cfg);

}  // namespace gpt2

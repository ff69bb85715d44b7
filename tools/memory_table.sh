#!/usr/bin/env bash
# The measured memory table on a GPU: for each model, optimizer and update mode, the
# analytic plan (train_gpt2 memory) beside what a real run allocates (--measure: the
# tracking allocator's peak and cudaMemGetInfo's bytes in use, CUDA context included).
# Usage: tools/memory_table.sh [batch] [extra train_gpt2 memory flags...]
set -euo pipefail
bin=${BIN:-build/train_gpt2}
batch=${1:-16}
shift || true
printf "| model | optimizer | update | plan | measured peak | plan error | driver in use | params+grads+state+master |\n|---|---|---|---|---|---|---|---|\n"
for depth in 12 24; do
  for opt in adamw lomo adalomo adafactor came adapprox; do
    for update in after_backward fused; do
      "$bin" memory --model d$depth --optimizer $opt --update $update --batch "$batch" --seq 1024 \
        --measure --json "$@" | python3 -c '
import json, sys
j = json.load(sys.stdin); m = j["measured"]; b = j["bytes"]
gib = lambda x: "%.2f GiB" % (x / 2**30)
plan, peak = j["total"], m["total"]["peak"]
nonact = b["params"] + b["grads"] + b["optimizer_state"] + b["master_weights"]
print("| %s | %s | %s | %s | %s | %+.2f%% | %s | %s |" % (j["model"], j["optimizer"], j["update"],
      gib(plan), gib(peak), 100.0 * (plan - peak) / peak, gib(m.get("driver_bytes_in_use", 0)), gib(nonact)))'
    done
  done
done

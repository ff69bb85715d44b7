#!/usr/bin/env bash
# Data-parallel scaling: tokens/s of `train_gpt2 train --gpus 2` against --gpus 1 at the
# same batch per GPU (bf16, T 1024, random tokens), and how much of the gradient
# communication backward does not hide: the 2-GPU step time with the all-reduce against
# the same run with it skipped (TRAIN_GPT2_SKIP_GRAD_REDUCE=1; the ranks then drift
# apart, the arithmetic stays the same).
#   tools/bench_dp.sh                                   # d12 d24, B 16 32 64, adamw
#   MODELS="12" BATCHES="32" OPTIMIZERS="adamw adalomo" STEPS=15 tools/bench_dp.sh
# Needs build/train_gpt2 (or $EXE) and python3; prints one markdown table.
set -euo pipefail
exe=${EXE:-build/train_gpt2}
models=${MODELS:-"12 24"}
batches=${BATCHES:-"16 32 64"}
optimizers=${OPTIMIZERS:-adamw}
steps=${STEPS:-15}
warmup=${WARMUP:-5}
dir=$(mktemp -d /tmp/bench_dp_XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo '{}' > "$dir/cfg.json"
python3 - "$dir/train_000000.bin" <<'PY'
import random, struct, sys
n = 64 * 1024 * 64 + 1  # 4M tokens; the loader wraps around, so any step count fits
header = struct.pack("<256i", 20240520, 1, n, *([0] * 253))
rng = random.Random(1)
with open(sys.argv[1], "wb") as f:
    f.write(header + struct.pack(f"<{n}H", *(rng.randrange(50257) for _ in range(n))))
PY

# median ms per step after the warmup steps, from rank 0's metrics
median_ms() {
  python3 - "$1" "$warmup" <<'PY'
import json, statistics, sys
ms = [j["ms"] for j in map(json.loads, open(sys.argv[1])) if j.get("event") == "step" and j["step"] > int(sys.argv[2])]
print(f"{statistics.median(ms):.2f}")
PY
}

run() {  # gpus depth batch optimizer -> median ms (or "fail")
  local out="$dir/run_$1_$2_$3_$4"
  if "$exe" train "$dir/cfg.json" --gpus "$1" --set model.depth="$2" --set data.batch_size="$3" \
      --set data.seq_len=1024 --set "data.train=\"$dir/train_*.bin\"" --set "optimizer.name=\"$4\"" \
      --set train.precision='"bf16"' --set schedule.steps="$steps" --set schedule.warmup_steps=0 \
      --set eval.every=0 --set sample.every=0 --set checkpoint.every=0 \
      --set "checkpoint.dir=\"$out\"" --set log.progress='"off"' --set log.every=1000000 \
      > "$out.log" 2>&1; then
    median_ms "$out/metrics.jsonl"
  else
    echo fail; tail -3 "$out.log" >&2
  fi
  rm -rf "$out"
}

echo "| model | optimizer | B/GPU | 1 GPU tok/s | 2 GPU tok/s | speedup | 2 GPU ms | ms, no all-reduce | unhidden comm |"
echo "|---|---|---|---|---|---|---|---|---|"
for opt in $optimizers; do
  for d in $models; do
    for b in $batches; do
      one=$(run 1 "$d" "$b" "$opt")
      two=$(run 2 "$d" "$b" "$opt")
      skip=$(TRAIN_GPT2_SKIP_GRAD_REDUCE=1 run 2 "$d" "$b" "$opt")
      python3 - "$d" "$opt" "$b" "$one" "$two" "$skip" <<'PY'
import sys
d, opt, b, one, two, skip = sys.argv[1:]
if "fail" in (one, two, skip):
    print(f"| d{d} | {opt} | {b} | {one} | {two} | | | {skip} | |"); sys.exit()
b, one, two, skip = int(b), float(one), float(two), float(skip)
t1, t2 = b * 1024 / one * 1e3, 2 * b * 1024 / two * 1e3
print(f"| d{d} | {opt} | {b} | {t1:.0f} | {t2:.0f} | {t2 / t1:.2f}x | {two:.1f} | {skip:.1f} | {max(0.0, two - skip) / two:.1%} |")
PY
    done
  done
done

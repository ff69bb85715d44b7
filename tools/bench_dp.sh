#!/usr/bin/env bash
# Data-parallel scaling: tokens/s of `train_gpt2 train --gpus N` against --gpus 1 at the
# same batch per GPU (bf16, T 1024, random tokens), the scaling efficiency (speedup / N),
# peak memory per GPU (rank 0's ledger), and how much of the gradient communication
# backward does not hide: the N-GPU step time with the reduction against the same run
# with it skipped (TRAIN_GPT2_SKIP_GRAD_REDUCE=1; the ranks then drift apart, the
# arithmetic stays the same).
#   tools/bench_dp.sh                                   # d12 d24, B 16 32 64, adamw, N = 2
#   MODELS="24" BATCHES="32" GPUS="2 4 8" OPTIMIZERS="adamw adamw:plain adalomo" tools/bench_dp.sh
# An optimizer written name:zero1 runs after_backward with ZeRO-1 (its reduce and
# broadcast are what the no-reduction run skips; after_backward runs get it by default
# since 2026-11-26, so a plain "adamw" row before that date measured the all-reduce),
# name:plain after_backward with a plain all-reduce (train.zero1=false). LAUNCH="--ranks"
# DEVICE=cpu runs CPU ranks instead (a smoke test of this script on a machine without GPUs).
# Needs build/train_gpt2 (or $EXE) and python3; prints one markdown table.
set -euo pipefail
exe=${EXE:-build/train_gpt2}
models=${MODELS:-"12 24"}
batches=${BATCHES:-"16 32 64"}
gpus=${GPUS:-2}
optimizers=${OPTIMIZERS:-adamw}
launch=${LAUNCH:---gpus}
device=${DEVICE:-cuda}
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

# "median ms per step after the warmup steps, peak bytes" from rank 0's metrics
median_ms() {
  python3 - "$1" "$warmup" <<'PY'
import json, statistics, sys
events = [json.loads(line) for line in open(sys.argv[1])]
ms = [j["ms"] for j in events if j.get("event") == "step" and j["step"] > int(sys.argv[2])]
peak = [j["memory"]["total"]["peak"] for j in events if j.get("event") == "end"]
print(f"{statistics.median(ms):.2f} {peak[0] if peak else 0}")
PY
}

run() {  # ranks depth batch optimizer[:zero1|:plain] -> "median_ms peak_bytes" (or "fail")
  local out="$dir/run_$1_$2_$3_${4/:/_}" name=${4%%:*} extra=()
  [[ $4 == *:zero1 ]] && extra=(--set train.zero1=true --set 'optimizer.update="after_backward"')
  [[ $4 == *:plain ]] && extra=(--set train.zero1=false --set 'optimizer.update="after_backward"')
  local ranks=()
  [ "$1" -gt 1 ] || [ "$launch" = --gpus ] && ranks=("$launch" "$1")
  if "$exe" train "$dir/cfg.json" "${ranks[@]}" --set model.depth="$2" --set data.batch_size="$3" \
      --set data.seq_len=1024 --set "data.train=\"$dir/train_*.bin\"" --set "optimizer.name=\"$name\"" \
      --set "train.device=\"$device\"" --set schedule.steps="$steps" --set schedule.warmup_steps=0 \
      --set eval.every=0 --set sample.every=0 --set checkpoint.every=0 \
      --set "checkpoint.dir=\"$out\"" --set log.progress='"off"' --set log.every=1000000 \
      "${extra[@]}" > "$out.log" 2>&1; then
    median_ms "$out/metrics.jsonl"
  else
    echo fail; tail -3 "$out.log" >&2
  fi
  rm -rf "$out"
}

echo "| model | optimizer | B/GPU | GPUs | 1 GPU tok/s | N GPU tok/s | speedup | efficiency | peak/GPU | N GPU ms | ms, no reduction | unhidden comm |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for opt in $optimizers; do
  for d in $models; do
    for b in $batches; do
      one=$(run 1 "$d" "$b" "$opt")
      for n in $gpus; do
        many=$(run "$n" "$d" "$b" "$opt")
        skip=$(TRAIN_GPT2_SKIP_GRAD_REDUCE=1 run "$n" "$d" "$b" "$opt")
        python3 - "$d" "$opt" "$b" "$n" "$one" "$many" "$skip" <<'PY'
import sys
d, opt, b, n, one, many, skip = sys.argv[1:]
if "fail" in (one, many, skip):
    print(f"| d{d} | {opt} | {b} | {n} | {one} | {many} | | | | | {skip} | |"); sys.exit()
b, n = int(b), int(n)
one_ms, many_ms, skip_ms = float(one.split()[0]), float(many.split()[0]), float(skip.split()[0])
peak = int(many.split()[1]) / 2**30
t1, tn = b * 1024 / one_ms * 1e3, n * b * 1024 / many_ms * 1e3
print(f"| d{d} | {opt} | {b} | {n} | {t1:.0f} | {tn:.0f} | {tn / t1:.2f}x | {tn / t1 / n:.2f} | "
      f"{peak:.2f} GiB | {many_ms:.1f} | {skip_ms:.1f} | {max(0.0, many_ms - skip_ms) / many_ms:.1%} |")
PY
      done
    done
  done
done

#!/usr/bin/env bash
# Trains the quickstart model with each of the six optimizers for the same number of
# steps and prints a table of val loss, mean step time, the median update_ms over the
# second half of the steps (after_backward updates; fused ones run inside backward), and
# how many of those steps the global-norm clip scaled (norm above the run's grad_clip;
# with train.grad_clip_value the pipeline's clip pass runs on every step whatever this
# says). Warmup is a tenth of the steps, whatever the config says (gpt2-124m.json's
# 700 would not fit a short comparison).
# Usage: tools/compare_optimizers.sh [steps] ["optimizer names"]
# CONFIG=configs/gpt2-124m.json EXTRA="--set data.batch_size=16" for another run.
# (run `make data` first). Each optimizer gets the learning rate that suits its update
# scale: AdaLomo scales its step by RMS(W) (~0.02 for GPT-2 weights), LOMO is plain SGD.
set -euo pipefail
steps=${1:-150}
bin=${BIN:-build/train_gpt2}
only=${2:-adamw lomo adalomo adafactor came adapprox}
config=${CONFIG:-configs/quickstart.json}
read -r -a extra <<< "${EXTRA:-}"
declare -A lr=([adamw]=2e-3 [lomo]=0.1 [adalomo]=0.1 [adafactor]=2e-3 [came]=2e-3 [adapprox]=2e-3)
printf "| optimizer | update | lr | val loss at step 0 | val loss at step %d | ms/step | update ms | clipped |\n" "$steps"
printf "|---|---|---|---|---|---|---|---|\n"
for opt in $only; do
  log=$(mktemp)
  if ! "$bin" train "$config" --set optimizer.name="\"$opt\"" "${extra[@]}" \
      --set optimizer.lr=${lr[$opt]} --set schedule.steps=$steps --set eval.every=$steps \
      --set schedule.warmup_steps=$((steps / 10)) \
      --set sample.every=0 --set checkpoint.dir="\"runs/compare-$opt\"" \
      --set log.progress='"off"' > "$log" 2>&1; then
    printf "| %s | | %s | | %s | | | |\n" "$opt" "${lr[$opt]}" "$(tail -1 "$log")"
    rm -f "$log"
    continue
  fi
  first=$(grep -m1 '^val loss' "$log" | awk '{print $3}')
  last=$(grep '^val loss' "$log" | tail -1 | awk '{print $3}')
  update=$(grep -m1 '^optimizer' "$log" | awk '{print $3}')
  ms=$(grep '^step' "$log" | awk -F'|' 'NR > 1 {gsub(/ ms/, "", $5); s += $5; n++} END {printf "%.0f", s / n}')
  upd=$(grep '^step' "$log" | sed -n 's/.*update_ms \([0-9.]*\).*/\1/p' | tail -n $((steps / 2)) | sort -g |
    awk '{v[NR] = $1} END {if (NR) printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
  clip=$(grep -m1 '^optimizer' "$log" | sed -n 's/.*grad_clip \([0-9.e+-]*\).*/\1/p')
  clipped=$(grep '^step' "$log" | sed -n 's/.*| norm \([0-9.]*\) |.*/\1/p' | tail -n $((steps / 2)) |
    awk -v c="${clip:-0}" '{n++; if (c > 0 && $1 + 1e-6 > c) k++} END {printf "%d/%d", k, n}')
  printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n" "$opt" "${update%,}" "${lr[$opt]}" "$first" "$last" "$ms" "${upd:--}" "$clipped"
  rm -f "$log"
done

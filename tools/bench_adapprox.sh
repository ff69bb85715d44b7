#!/usr/bin/env bash
# Adapprox against AdamW on real text: d12 B 16 on the Brown shards (data/brown, `make
# data`), where the ranks settle low (~12-17) as they never do on bench_train's random
# tokens. Runs each optimizer $RUNS times, alternating, $STEPS steps (warmup 10, cosine
# to 0), and prints the median ms of the last 20 steps of each run, Adapprox's mean rank
# and S-RSIs at the last step, and the update's share of Adapprox's step.
#   tools/bench_adapprox.sh                  BIN=build-gpu/train_gpt2 RUNS=2 STEPS=120
set -euo pipefail
bin=${BIN:-build/train_gpt2}
runs=${RUNS:-2}
steps=${STEPS:-120}
[[ -f data/brown/train_000000.bin ]] || { echo "bench_adapprox: no data/brown shards (make data)" >&2; exit 1; }
median() {  # the median ms of steps > steps - 20, and the last step's stats
  python3 - "$1" "$steps" <<'PY'
import re, statistics, sys
ms, last = {}, ''
for line in open(sys.argv[1], errors='replace').read().replace('\r', '\n').split('\n'):
    m = re.search(r'step +(\d+)/\d+ \|.*?\| ([0-9.]+) ms \|', line)
    if m:
        ms[int(m.group(1))] = float(m.group(2))
        last = line[line.find('adapprox_rank'):] if 'adapprox_rank' in line else ''
steps = int(sys.argv[2])
v = [ms[s] for s in range(steps - 19, steps + 1) if s in ms]
if len(v) < 20: sys.exit('bench_adapprox: the run printed %d of the last 20 steps' % len(v))
print('%.2f %s' % (statistics.median(v), last))
PY
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
declare -A best
printf '| run | optimizer | ms/step (median of the last 20) | last step |\n|---|---|---|---|\n'
for r in $(seq "$runs"); do
  for opt in adamw adapprox; do
    lr=6e-4; [[ $opt == adapprox ]] && lr=2e-3
    "$bin" train configs/gpt2-124m.json --set optimizer.name=$opt --set optimizer.lr=$lr \
      --set schedule.steps="$steps" --set schedule.warmup_steps=10 --set checkpoint.every=0 \
      --set eval.every=0 --set sample.every=0 > "$log" 2>&1 || { tail -5 "$log" >&2; exit 1; }
    read -r ms stats <<< "$(median "$log")"
    printf '| %d | %s | %s | %s |\n' "$r" "$opt" "$ms" "$stats"
    if [[ -z ${best[$opt]:-} ]] || python3 -c "import sys; sys.exit(not $ms < ${best[$opt]})"; then best[$opt]=$ms; fi
  done
done
python3 -c "a, p = ${best[adamw]}, ${best[adapprox]}; print('best: AdamW %.2f ms, Adapprox %.2f ms: the update is %.1f%% of Adapprox\'s step (%.2fx AdamW)' % (a, p, 100 * (p - a) / p, p / a))"

#!/usr/bin/env bash
# Builds everything for Hopper and runs the GPU tests and benchmarks on a GPU machine,
# writing logs to the folder given as $1 (default gpu_suite_logs/).
#   tools/gpu_suite.sh out/            # build + all tests + benchmarks
#   SUITE="tests" tools/gpu_suite.sh   # just the tests
# On the GPU machine the Catch2 v2 header and pcre2.h come from .carry/include (README).
set -uo pipefail
out=${1:-gpu_suite_logs}
suite=${SUITE:-"tests bench"}
mkdir -p "$out" && out=$(cd "$out" && pwd)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  > "$out/configure.log" 2>&1 || { tail -20 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -m20 -A5 error "$out/build.log"; exit 1; }
if [[ $suite == *tests* ]]; then
  (cd build-gpu && ctest -j 4 --output-on-failure > "$out/ctest.log" 2>&1)
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest.log" | head -30
fi
if [[ $suite == *bench* ]]; then
  for b in build-gpu/bench_*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    [ "$name" = bench_train ] && continue
    timeout 300 "$b" > "$out/$name.log" 2>&1; tail -30 "$out/$name.log"
  done
  timeout 400 build-gpu/bench_train ${BENCH_TRAIN_ARGS:-} > "$out/bench_train.log" 2>&1
  tail -12 "$out/bench_train.log"
fi

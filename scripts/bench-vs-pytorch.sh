#!/usr/bin/env bash
# lorafuse against PyTorch, the same LoRA training step, in one run (issue 7's bench):
#
#   scripts/bench-vs-pytorch.sh build  (here)    builds benches/train_step.rs with --features cuda,
#                                                strips it, and puts it with a pinned diffusers wheel
#                                                (the device has torch, transformers and peft, not
#                                                diffusers) into .bench-bundle/ (git-ignored).
#   scripts/bench-vs-pytorch.sh run    (device)  SD1.5 UNet, 512x512, fp16, batch 1 and 4 x rank 8
#                                                and 32: lorafuse's bench, then
#                                                benches/pytorch_reference.py with and without
#                                                gradient checkpointing, then the joined JSON and
#                                                the ratio table (printed last). Writes
#                                                $OUT/bench-vs-pytorch.{log,json} and both raw JSONs.
#   scripts/bench-vs-pytorch.sh cpu    (here)    the tiny fixture model on the CPU against PyTorch
#                                                on the CPU (when torch, diffusers and peft import;
#                                                PYTHON=... picks the interpreter): a ratio, written
#                                                to benches/results/cpu-vs-pytorch-<date>.json.
#   scripts/bench-vs-pytorch.sh cpu-bf16 (here)  lorafuse f32 and bf16 (cpu_precision) against
#                                                PyTorch f32 and bf16 CPU autocast, each under
#                                                /usr/bin/time, then benches/compare_cpu.py's
#                                                table (GFLOP/s from torch's FLOP count, the
#                                                machine's 4096^3 GEMM rate, peak RSS).
#                                                BENCH_MODEL=tiny|sd15 (random weights),
#                                                BENCH_RES, BENCH_CONFIGS, BENCH_WARMUP,
#                                                BENCH_STEPS; OUT=folder for the files.
#
# The device call:  run(command="bash scripts/bench-vs-pytorch.sh run", carry=[".bench-bundle"])
# Then commit $OUT's files under benches/results/ (date in the name).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.bench-bundle
DIFFUSERS=diffusers==0.42.1
CONFIGS="${BENCH_CONFIGS:-1x8,4x8,1x32,4x32}"

bench_exe() { # the train_step bench binary cargo builds with the given features
  cargo bench --no-run "$@" --bench train_step --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "train_step":
        print(m["executable"])'
}

build() {
  set -e
  eval "$(scripts/install-nvcc.sh | tail -n 1)"
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels"
  cargo bench --no-run --features cuda --bench train_step
  objcopy --strip-debug "$(bench_exe --features cuda)" "$BUNDLE/train_step"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$BUNDLE/wheels" "$DIFFUSERS"
  git rev-parse --short HEAD > "$BUNDLE/commit.txt"
  du -sh "$BUNDLE"
}

run() {
  local out="${OUT:-bench-out}"
  mkdir -p "$out"
  local log="$out/bench-vs-pytorch.log"
  [ -x "$BUNDLE/train_step" ] || { echo "bench-vs-pytorch: no $BUNDLE/train_step; run 'scripts/bench-vs-pytorch.sh build' here and carry $BUNDLE" >&2; exit 2; }
  local py; py="$(mktemp -d)"
  python3 -m pip install --quiet --no-deps --target "$py" "$BUNDLE"/wheels/*.whl
  {
    echo "== bench-vs-pytorch at commit $(cat "$BUNDLE/commit.txt") on $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
  } 2>&1 | tee "$log"
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
  echo "== lorafuse (baseline used ${base} MiB)" | tee -a "$log"
  BENCH_CONFIGS="$CONFIGS" BENCH_BASELINE_USED=$((base * 1048576)) BENCH_JSON="$out/lorafuse.json" \
    "$BUNDLE/train_step" 2>&1 | tee -a "$log"
  echo "== PyTorch" | tee -a "$log"
  PYTHONPATH="$py${PYTHONPATH:+:$PYTHONPATH}" python3 benches/pytorch_reference.py --device cuda \
    --configs "$CONFIGS" --json "$out/pytorch.json" 2>&1 | tee -a "$log"
  python3 benches/compare_results.py "$out/lorafuse.json" "$out/pytorch.json" "$out/bench-vs-pytorch.json" 2>&1 | tee -a "$log"
}

cpu() {
  set -e
  local py="${PYTHON:-python3}" out; out="benches/results/cpu-vs-pytorch-$(date -u +%F)"
  "$py" -c "import torch, diffusers, peft" 2>/dev/null || { echo "SKIPPED: $py cannot import torch, diffusers and peft"; exit 0; }
  local threads; threads=$(nproc)
  BENCH_DEVICE=cpu BENCH_MODEL=tiny BENCH_CONFIGS="1x8,4x8" BENCH_JSON="$out.lorafuse.json" \
    RAYON_NUM_THREADS=$threads cargo bench --bench train_step 2>&1 | grep -v '^ *\(Compiling\|Running\|Finished\)'
  "$py" benches/pytorch_reference.py --device cpu --model tests/fixtures/tiny-sd15-diffusers \
    --configs 1x8,4x8 --threads "$threads" --no-checkpointing-runs --json "$out.pytorch.json"
  python3 benches/compare_results.py "$out.lorafuse.json" "$out.pytorch.json" "$out.json"
  rm -f "$out.lorafuse.json" "$out.pytorch.json"
}

cpu_bf16() {
  set -e
  local py="${PYTHON:-python3}" model="${BENCH_MODEL:-tiny}" configs="${BENCH_CONFIGS:-1x8,4x8}"
  local warmup="${BENCH_WARMUP:-2}" steps="${BENCH_STEPS:-5}" res="${BENCH_RES:-}"
  local out="${OUT:-bench-out}" threads; threads=$(nproc)
  mkdir -p "$out"
  "$py" -c "import torch, diffusers, peft" 2>/dev/null || { echo "SKIPPED: $py cannot import torch, diffusers and peft"; exit 0; }
  cargo bench --no-run --bench train_step 2>/dev/null
  local exe; exe="$(bench_exe)"
  # lorafuse's bf16 path needs AVX512_BF16; without it the table has the f32 rows only (PyTorch's
  # autocast would run emulated bf16 there, which no goal measures).
  local precisions="f32 bf16"
  grep -qw avx512_bf16 /proc/cpuinfo || { precisions=f32; echo "== no AVX512_BF16 on this CPU: f32 only"; }
  local torch_model=() torch_res=()
  [ "$model" = tiny ] && torch_model=(--model tests/fixtures/tiny-sd15-diffusers)
  [ -n "$res" ] && torch_res=(--res "$res")
  echo "== $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), load: $(cut -d' ' -f1-3 /proc/loadavg)"
  for p in $precisions; do
    echo "== lorafuse $p"
    env BENCH_PRECISION=$p BENCH_DEVICE=cpu BENCH_MODEL="$model" ${res:+BENCH_RES=$res} BENCH_CONFIGS="$configs" \
      BENCH_WARMUP="$warmup" BENCH_STEPS="$steps" BENCH_JSON="$out/lorafuse-$p.json" RAYON_NUM_THREADS=$threads \
      /usr/bin/time -f "%M" -o "$out/rss-lorafuse-$p.txt" "$exe"
    echo "   peak RSS $(tail -n 1 "$out/rss-lorafuse-$p.txt") KiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  for p in $precisions; do
    echo "== PyTorch $p"
    local extra=(); [ $p = bf16 ] && extra=(--cpu-bf16) || extra=(--flops --gemm-peak)
    /usr/bin/time -f "%M" -o "$out/rss-pytorch-$p.txt" "$py" benches/pytorch_reference.py --device cpu \
      "${torch_model[@]}" "${torch_res[@]}" --configs "$configs" --threads "$threads" --warmup "$warmup" \
      --steps "$steps" --no-checkpointing-runs "${extra[@]}" --json "$out/pytorch-$p.json"
    echo "   peak RSS $(tail -n 1 "$out/rss-pytorch-$p.txt") KiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"
  done
  python3 benches/compare_cpu.py "$out" "$out/cpu-bf16.json"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  cpu) cpu ;;
  cpu-bf16) cpu_bf16 ;;
  *) echo "usage: scripts/bench-vs-pytorch.sh build|run|cpu|cpu-bf16" >&2; exit 2 ;;
esac

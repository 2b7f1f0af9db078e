#!/usr/bin/env bash
# The multi-GPU check (issue 18), for a device machine with two or more GPUs. UNVERIFIED: no
# such machine has run it yet; CI runs the same data-parallel path on thread ranks
# (tests/data_parallel.rs) and the launcher up to the NCCL call.
#
#   scripts/multi-gpu-check.sh build   (here)   the CUDA build of lorafuse, into .mgpu-bundle/
#   scripts/multi-gpu-check.sh run     (device) the demo's data and tiny model, then
#     1. one GPU, batch 2, gradient_accumulation_steps 2      (4 images per step)
#     2. --gpus 0,1, batch 2 per GPU, accumulation 1          (4 images per step)
#   and compares the two LoRAs tensor by tensor: with two ranks NCCL's sum is g0 + g1, the
#   same single addition one device makes, so they should be identical bit for bit (the
#   script prints the largest difference either way), then prints each run's seconds per
#   step and the scaling efficiency t(1 GPU) / (2 · t(2 GPUs)) at the same images per step.
#   Writes $OUT/multi-gpu-check.log.
#
# The device call: run(command="bash scripts/multi-gpu-check.sh run", carry=[".mgpu-bundle"])
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.mgpu-bundle

build() {
  set -e
  eval "$(scripts/install-nvcc.sh | tail -n 1)"
  cargo build --release --features cuda --bin lorafuse
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  objcopy --strip-debug target/release/lorafuse "$BUNDLE/lorafuse"
}

run() {
  local out=${OUT:-/tmp/mgpu} bin=$PWD/$BUNDLE/lorafuse dir=/tmp/mgpu-demo
  mkdir -p "$out"
  exec > >(tee "$out/multi-gpu-check.log") 2>&1
  nvidia-smi -L
  [ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "needs two GPUs"; exit 1; }
  "$bin" demo --dir "$dir" --steps 1 > /dev/null
  local common=(--set batch_size=2 --set max_train_steps=40 --set sample_every_n_steps=0
                --set save_precision=fp32 --set validate_every_n_steps=1000)
  local t0 t1 t2
  t0=$(date +%s.%N)
  "$bin" train "$dir/demo.yaml" "${common[@]}" --set device=cuda:0 \
    --set gradient_accumulation_steps=2 --set output_dir="$dir/one"
  t1=$(date +%s.%N)
  "$bin" train "$dir/demo.yaml" "${common[@]}" --gpus 0,1 \
    --set gradient_accumulation_steps=1 --set output_dir="$dir/two"
  t2=$(date +%s.%N)
  python3 - "$dir/one/demo-shapes.safetensors" "$dir/two/demo-shapes.safetensors" <<'PY'
import json, struct, sys, array
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n]); head.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in head.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a.keys() == b.keys(), "different tensors"
worst = max(max((abs(x - y) for x, y in zip(array.array("f", a[k]), array.array("f", b[k]))), default=0.0) for k in a)
same = all(a[k] == b[k] for k in a)
print(f"LoRA on 2 GPUs vs 1 GPU with accumulation 2: {'identical bit for bit' if same else 'DIFFERENT'}; largest difference {worst:.3e}")
PY
  python3 -c "t1=$t1-$t0; t2=$t2-$t1; print(f'1 GPU: {t1:.1f} s, 2 GPUs: {t2:.1f} s for 40 steps of 4 images (start-up included); scaling efficiency {t1/(2*t2):.2f}')"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# GPU verification in one device call. The device machine has no Rust toolchain, so:
#
#   scripts/gpu-check.sh build   (here)   builds the CUDA test binary (`cuda`: tests/cuda_*.rs) and
#                                         every CUDA bench (benches/cuda_*.rs) with `--features cuda`,
#                                         strips them and packs them into .gpu-bundle/ (git-ignored,
#                                         well under the 64 MiB a device call can carry).
#   scripts/gpu-check.sh run     (device) unpacks the bundle, prints nvidia-smi, runs each test
#                                         file's tests (one process per tests/cuda_*.rs module, so a
#                                         fault stays in its file; on the GPU they use full SD1.5
#                                         shapes) and every
#                                         bench, then benches/kernel_reference.py (PyTorch at the
#                                         same shapes, the device's ceilings, the joined table), and
#                                         writes $OUT/gpu-check.log and $OUT/gpu-check.json (per
#                                         file or bench: passed, failed, skipped).
#
# The device call:  run(command="bash scripts/gpu-check.sh run", carry=[".gpu-bundle"])
# Then commit $OUT's files under benches/results/ (date in the name).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpu-bundle

build() {
  set -e
  eval "$(scripts/install-nvcc.sh | tail -n 1)"
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/bin"
  local tests=(--test cuda --test cuda_probe) benches=()
  for f in tests/cuda_*.rs; do basename "$f" .rs; done | grep -vx cuda_probe > "$BUNDLE/modules.txt"
  for f in benches/cuda_*.rs; do [ -e "$f" ] && benches+=(--bench "$(basename "$f" .rs)"); done
  cargo build --release --features cuda "${tests[@]}" "${benches[@]}" --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["bench"]):
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
' > "$BUNDLE/list.txt"
  while read -r kind name exe; do
    objcopy --strip-debug "$exe" "$BUNDLE/bin/$kind-$name"
  done < "$BUNDLE/list.txt"
  tar -C "$BUNDLE" -cJf "$BUNDLE/bin.tar.xz" bin && rm -rf "$BUNDLE/bin"
  git rev-parse --short HEAD > "$BUNDLE/commit.txt"
  du -sh "$BUNDLE"
  echo "built $(wc -l < "$BUNDLE/list.txt") binaries at commit $(cat "$BUNDLE/commit.txt")"
}

run() {
  local out="${OUT:-gpu-check-out}"
  mkdir -p "$out"
  local log="$out/gpu-check.log" json="$out/gpu-check.json"
  [ -f "$BUNDLE/bin.tar.xz" ] || { echo "gpu-check: no $BUNDLE/bin.tar.xz; run 'scripts/gpu-check.sh build' here and carry $BUNDLE" >&2; exit 2; }
  local work; work="$(mktemp -d)"
  tar -C "$work" -xJf "$BUNDLE/bin.tar.xz"
  {
    echo "== gpu-check at commit $(cat "$BUNDLE/commit.txt") on $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi failed"
  } | tee "$log"
  # What runs: each test file's module of the test binary (name test-<file>), then each bench.
  local runs=()
  shopt -s nullglob
  for exe in "$work"/bin/test-cuda; do
    while read -r module; do runs+=("$exe test-$module $module::"); done < "$BUNDLE/modules.txt"
  done
  for exe in "$work"/bin/test-cuda_probe; do runs+=("$exe test-cuda_probe"); done
  for exe in "$work"/bin/bench-*; do runs+=("$exe $(basename "$exe")"); done
  local entries=()
  for entry in "${runs[@]}"; do
    local exe name filter
    read -r exe name filter <<< "$entry"
    echo "== $name" | tee -a "$log"
    local t0 t1 rc
    t0=$(date +%s.%N)
    if [[ "$name" == test-* ]]; then
      "$exe" --test-threads=1 --nocapture "$filter" 2>&1 | tee "$work/$name.out" >> "$log"; rc=${PIPESTATUS[0]}
    else
      BENCH_JSON="$out/$name.json" "$exe" --bench 2>&1 | tee "$work/$name.out" >> "$log"; rc=${PIPESTATUS[0]}
    fi
    t1=$(date +%s.%N)
    local passed failed skipped
    passed=$(grep -o '[0-9]* passed' "$work/$name.out" | awk '{s+=$1} END {print s+0}')
    failed=$(grep -o '[0-9]* failed' "$work/$name.out" | awk '{s+=$1} END {print s+0}')
    skipped=$(grep -c 'SKIPPED: no CUDA device' "$work/$name.out")
    tail -n 3 "$work/$name.out"
    entries+=("{\"binary\": \"$name\", \"exit\": $rc, \"passed\": $passed, \"failed\": $failed, \"skipped_no_device\": $skipped, \"seconds\": $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")}")
  done
  if [ -f "$out/bench-cuda_ops.json" ] && python3 -c "import torch" 2>/dev/null; then
    echo "== PyTorch at the same shapes (benches/kernel_reference.py)" | tee -a "$log"
    python3 benches/kernel_reference.py --ours "$out/bench-cuda_ops.json" --json "$out/kernel_reference.json" 2>&1 | tee -a "$log"
  fi
  local gpu; gpu="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
  {
    echo "{"
    echo "  \"commit\": \"$(cat "$BUNDLE/commit.txt")\","
    echo "  \"gpu\": \"${gpu:-none}\","
    echo "  \"results\": ["
    local i
    for i in "${!entries[@]}"; do
      local sep=","; [ "$i" -eq $((${#entries[@]} - 1)) ] && sep=""
      echo "    ${entries[$i]}$sep"
    done
    echo "  ]"
    echo "}"
  } > "$json"
  echo "== summary" | tee -a "$log"
  cat "$json" | tee -a "$log"
  if grep -q '"failed": [1-9]\|"exit": [1-9]' "$json"; then
    echo "gpu-check: FAILURES (above)"; return 1
  fi
  if [ -n "$gpu" ] && grep -q '"skipped_no_device": [1-9]' "$json"; then
    echo "gpu-check: nvidia-smi sees a GPU but tests skipped it (see SKIPPED lines in $log)"; return 1
  fi
  echo "gpu-check: all passed"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/gpu-check.sh build|run (see the header of this script)" >&2; exit 2 ;;
esac

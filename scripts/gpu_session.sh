#!/usr/bin/env bash
# The prepared device check for a session lent a GPU (issues 13 and 14): one command, time-boxed
# steps, results under $OUT. Device time is short (about 15 minutes a session, starts included;
# one command at most 10 minutes), so run it once, from the repository root:
#
#   run(command="bash scripts/gpu_session.sh", timeout_s=590)      # the device tool
#   bash scripts/gpu_session.sh quick                               # ~3 min: step 1 and 2 only
#
# and read $OUT/summary.txt (one line per step: rc, seconds) and $OUT/session.tar.gz (every log,
# JSON and plot). Nothing is installed: the device image's own JAX / CUDA is used and the repository
# is imported from PYTHONPATH (the image's JAX may be newer than setup.cfg's pin: env.txt records
# it). Steps, in order of what a failure would cost the issues most:
#   1. the GPU kernels run and match (tests that are interpret-mode on CPU run natively on a GPU);
#   2. linear memories and the delta rule: correctness vs XLA, then fwd / fwd+bwd time and memory
#      vs the XLA path and cuDNN attention (issue 14's goals: 2x XLA at 4K, 0.35x cuDNN at 8K);
#   3. the deep memories (issue 13): the same, with the kernel and the XLA backward;
#   4. the XLA path's backward / forward ratio for the deep memories (issue 13's <= 3x goal).
set -uo pipefail
MODE=${1:-full}
OUT=${OUT:-/tmp/gpu_session}
LOGS="$OUT/logs"
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false MIRAS_SHARED_DATA="${MIRAS_SHARED_DATA:-$PWD/shared/data}"
PY=${PY:-python3}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() { # step NAME SECONDS CMD...: time-boxed; log in logs/NAME.log; one line in summary.txt
  local name=$1 secs=$2
  shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s $(tail -n 1 "$LOGS/$name.log" | cut -c1-160)" | tee -a "$SUMMARY"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
  git log --oneline -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step kernels_run_and_match 150 $PY -m pytest -q -x -m 'slow or not slow' -p no:cacheprovider \
  tests/pallas_kernels/test_pallas_gpu_interpret.py tests/pallas_kernels/test_triton_lowering.py \
  tests/layers/test_attention_gpu.py
step bench_linear 200 $PY scripts/bench_kernels.py --ops=gated_deltanet,gla \
  --lengths=4096,8192 --shapes=b4h6d128 --repeats=3 --out="$LOGS/kernels_linear"
if [ "$MODE" != quick ]; then
  step deep_run_and_match 100 $PY -m pytest -q -x -m 'slow or not slow' -p no:cacheprovider \
    tests/pallas_kernels/test_mlp_memory_triton.py
  step bench_deep 150 $PY scripts/bench_kernels.py --ops=titans,moneta \
    --lengths=4096 --shapes=340m --repeats=3 --out="$LOGS/kernels_deep"
  step backward_ratio 90 $PY scripts/bench_memory.py --compare_backward --rules=titans \
    --lengths=2048 --remat_groups=1 --repeats=3 --out="$LOGS/bench_memory.json"
fi
tar -czf "$OUT/session.tar.gz" -C "$OUT" logs env.txt summary.txt
echo "wrote $OUT/summary.txt and $OUT/session.tar.gz"

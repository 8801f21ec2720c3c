#!/usr/bin/env bash
# GLEAN on one GPU: ours (float32, bfloat16) against mmagic (float32, PyTorch autocast bfloat16), inference and the
# full G+D train step, at ffhq_x16 and cat_x8; images/s, ratios, compile time, peak memory, MFU.
#
#   bash benchmarks/gpu.sh                 # from the repository root or anywhere; writes benchmarks/results/gpu-*/
#
# Needs: JAX with CUDA, flax, optax, orbax, PyTorch (CUDA) installed; this repository installed (pip install -e .)
# and the mmagic oracle (pip install --no-deps -r requirements/oracle.txt plus the small pure-Python packages of the
# test extra; WHEELS=DIR installs them offline from a folder of wheels first). Without mmagic, NO_MMAGIC=1 times
# ours only.
#
# Budget: under 8 minutes on one H100. Four runs, most important first, each capped at RUN_TIMEOUT seconds
# (default 110); each run rewrites its JSON after every finished result, so a capped run keeps what it finished.
# Override the runs with RUNS="name:config:batch:dtype:mmagic_dtype ..." (the test suite's CPU check does).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}"
RUN_TIMEOUT="${RUN_TIMEOUT:-110}"
REPEATS="${REPEATS:-3}"
MODE="${MODE:-train,infer}"
RUNS="${RUNS:-ffhq_x16_bf16:configs/ffhq_x16.py:4:bfloat16:float32 \
ffhq_x16_fp32:configs/ffhq_x16.py:4:float32:float32 \
cat_x8_bf16:configs/cat_x8.py:8:bfloat16:bfloat16 \
cat_x8_fp32:configs/cat_x8.py:8:float32:float32}"

export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and PyTorch share the GPU in one process
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if [[ -n "${WHEELS:-}" ]]; then
  "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >/dev/null || {
    echo "gpu.sh: installing the wheels in $WHEELS failed" >&2; exit 2; }
fi

mkdir -p "$OUT"
"$PY" - <<'PYEOF' > "$OUT/env.txt" 2>&1 || true
import jax, platform
print("jax", jax.__version__, jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:  # noqa: BLE001
    print("torch: not importable:", e)
print(platform.platform())
PYEOF
cat "$OUT/env.txt"

COMPARE=(--compare-mmagic)
[[ -n "${NO_MMAGIC:-}" ]] && COMPARE=()

start=$(date +%s)
failed=0
for run in $RUNS; do
  IFS=: read -r name config batch dtype mdtype <<<"$run"
  echo "=== $name: $config batch $batch, ours $dtype vs mmagic $mdtype ($(( $(date +%s) - start )) s elapsed)"
  timeout --signal=TERM --kill-after=10 "$RUN_TIMEOUT" \
    "$PY" -m glean_jax.benchmark --config "$config" --mode "$MODE" --batch-size "$batch" --dtype "$dtype" \
      --mmagic-dtype "$mdtype" "${COMPARE[@]}" --repeats "$REPEATS" --warmup 1 --json "$OUT/$name.json" \
      > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 4 "$OUT/$name.log"
  if [[ $rc -ne 0 ]]; then
    failed=1
    echo "=== $name: exit code $rc$([[ $rc -eq 124 ]] && echo " (cut at ${RUN_TIMEOUT}s; finished results kept)")"
  fi
done

shopt -s nullglob
jsons=("$OUT"/*.json)
if (( ${#jsons[@]} )); then
  "$PY" -m glean_jax.benchmark summarize "${jsons[@]}" | tee "$OUT/summary.md"
fi
echo "total $(( $(date +%s) - start )) s; results in $OUT"
exit $failed

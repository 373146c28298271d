#!/usr/bin/env bash
# One device call: detection_power.py on the device machine's CPU cores (the GPU stays idle: the
# built-in model is CPU work, and 16 cores run 8x the runs of this 2-core machine). Rows append to
# $OUT/power.jsonl; pass the last call's file as RESUME=path to carry on where it stopped.
#   ARGS="--mix realistic --rep-offset 40000 --fa-runs 200 --reps 0 --only '...'" bash benchmarks/power_session.sh
# BENCH=benchmarks/deployment_power.py runs the long-context deployment benchmark instead.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=
[ -n "${RESUME:-}" ] && cp "$RESUME" "$OUT/power.jsonl"
nproc; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
eval "timeout -s INT ${LIMIT:-540} python3 ${BENCH:-benchmarks/detection_power.py} $ARGS --workers $(nproc) \
  --results $OUT/power.jsonl --table $OUT/power.md" 2>&1 | grep -v Warning | tail -40
wc -l "$OUT/power.jsonl"

#!/usr/bin/env bash
# One device call's first minute: what `import torch` and the model class cost a cold process on
# the device image, with the image's transformers and with the pyproject's (5.25, from .whl).
# Each is timed twice (the first run reads a cold disk); `-X importtime` logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
CODE='import time, torch; t = time.perf_counter(); from transformers import AutoModelForCausalLM; import transformers, sys; print(transformers.__version__, "sklearn" in sys.modules, f"{time.perf_counter() - t:.2f}")'
for which in image wheels; do
  for i in 1 2; do
    s=$(date +%s%N)
    if [ $which = wheels ]; then r=$(PYTHONPATH=/tmp/site python3 -X importtime -c "$CODE" 2> "$OUT/importtime_${which}_$i.txt")
    else r=$(python3 -X importtime -c "$CODE" 2> "$OUT/importtime_${which}_$i.txt"); fi
    echo "$which run $i: transformers, sklearn imported, model-class import s: $r; process $(( ($(date +%s%N) - s) / 1000000 )) ms"
  done
done

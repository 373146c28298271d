#!/usr/bin/env bash
# One device call: the GPU-vs-CPU statistics tests, then the scoring benchmark (and, with BASE=dir,
# the same benchmark on an older copy of the code in that dir, for a same-card comparison).
# Wheels the device image lacks (pydantic and its needs) travel in .whl (see docs/performance.md).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pytest -q -s --noconftest -p no:cacheprovider tests/reference/test_scoring_gpu.py 2>&1 | tee "$OUT/gpu_test.log" | tail -12
ARGS=${ARGS:---records 800 --compile --breakdown --components --per-kind --vocab2 0}
python3 benchmarks/scoring_throughput.py $ARGS --out "$OUT/new.json" > /dev/null 2> "$OUT/new.log" || tail -20 "$OUT/new.log"
if [ -n "${BASE:-}" ]; then
  (cd "$BASE" && python3 benchmarks/scoring_throughput.py ${BASE_ARGS:-$ARGS} --out "$OUT/base.json" > /dev/null \
     2> "$OUT/base.log") \
    || tail -20 "$OUT/base.log"
fi
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for name in ("base", "new"):
    p = pathlib.Path(sys.argv[1]) / f"{name}.json"
    if not p.exists():
        continue
    d = json.loads(p.read_text())
    s = d["servecheck"]
    print(name, f"{s['tokens_per_s']:.0f} tok/s", f"decoder {d.get('decoder_only_tokens_per_s', 0):.0f}",
          f"peak+{s['peak_above_weights_gib']:.2f} GiB", f"ceiling {d.get('bf16_matmul_tflops', 0):.0f}")
    for r in d.get("runs", [])[1:]:
        print(f"  scale {r['logit_scale']}: {r['tokens_per_s']:.0f} tok/s, entropy {r['mean_entropy_T1_nats']:.2f}")
    for k in ("naive_hf", "generate", "servecheck_vocab2"):
        if k in d:
            print(f"  {k}: {d[k]['tokens_per_s']:.1f} tok/s", f"peak {d[k].get('peak_above_weights_gib', d[k].get('peak_gib', 0)):.2f}")
    for k, v in d.get("per_kind", {}).items():
        print(f"  {k:22s} {v['us_per_row']:.2f} us/row  score {v['score_s']:.3f}s dec {v['decoder_s']:.3f}s")
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in d.get("us_per_row", {}).items()))
PY

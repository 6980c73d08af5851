#!/usr/bin/env bash
# Run the speed benchmark on a GPU (one host, all visible GPUs; the mesh spans them).
#
#   bash benchmarks/gpu_bench.sh [OUT_DIR] [extra bench_speed.py flags...]
#
# Needs a CUDA 12 JAX in the project's venv: `pip install -e ".[gpu]"` (jax[cuda12]).
# Without a GPU it stops with exit code 3 instead of silently timing the CPU.
# The L1000 shape runs with all 112,171 rows (4.7 GB in float32, kept on the device);
# pass `--l1000-rows N` to subsample. Results: OUT_DIR/gpu.json and OUT_DIR/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${1:-benchmarks/results}"
shift || true
mkdir -p "$OUT"

if ! "$PY" - <<'PYEOF'
import sys
import jax
try:
    gpus = jax.devices("gpu")
except RuntimeError:
    gpus = []
if not gpus:
    print("no GPU visible to JAX (install jax[cuda12] and check nvidia-smi)", file=sys.stderr)
    sys.exit(3)
print("GPUs:", ", ".join(d.device_kind for d in gpus), file=sys.stderr)
PYEOF
then
  exit 3
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

# Leave JAX's default preallocation on (75% of GPU memory): peak device memory is read
# from the allocator's own statistics (device_peak_mb in the JSON), not from nvidia-smi.
"$PY" benchmarks/bench_speed.py --platform gpu --l1000-rows 0 --steps 50 --repeats 5 \
  --ablations --out "$OUT/gpu.json" "$@"
"$PY" - "$OUT/gpu.json" "$OUT/gpu.md" <<'PYEOF'
import json, sys
sys.path.insert(0, "benchmarks")
from bench_speed import fmt_ablations, fmt_notes, fmt_table
res = json.load(open(sys.argv[1]))["results"]
text = fmt_table(res) + "\n\n" + fmt_notes(res)
abl = next((r["ablations"] for r in res if "ablations" in r), None)
text += "\n\n" + fmt_ablations(abl) if abl else ""
open(sys.argv[2], "w").write(text + "\n")
print(text)
PYEOF

# Whole transcriptomes and large cell counts (issue 9): the step time against genes and
# panel size (before/after the candidate prefilter), the L1000 shape at k = 943 and the
# streamed 100,000 × 30,000 synthetic case at k = 200 (time to a converged panel, peak
# host memory, planted modules recovered against top-variance genes).
"$PY" benchmarks/scale_steps.py --d 2000,8000,16000,32786 --k 50,200,500 --batch 256 \
  --steps 200 | tee "$OUT/gpu_scale_steps.md"
"$PY" benchmarks/scale_steps.py --d 10463 --k 943 --batch 256 --steps 200 \
  | tee "$OUT/gpu_scale_l1000.md"
SYN="$OUT/synthetic_100000x30000.h5ad"
[ -f "$SYN" ] || "$PY" benchmarks/make_synthetic.py "$SYN" --cells 100000 --genes 30000
# The autoencoder's own panel, as in the CPU run of benchmarks/scale.md: no swap
# refinement (its exact search is numpy on the host: ≈ 7 s a swap and 5.2 GiB on
# 4,473 sampled rows × 30,000 genes, benchmarks/refine_cost.py); default options
# otherwise (batch 128 above 10,000 varying genes, sharpening on).
"$PY" benchmarks/scale_synthetic.py "$SYN" --k 200 --log --set 'refine=false' \
  --json "$OUT/gpu_scale_synthetic.jsonl" | tee "$OUT/gpu_scale_synthetic.md"

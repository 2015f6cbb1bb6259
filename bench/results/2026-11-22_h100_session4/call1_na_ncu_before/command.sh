#!/bin/bash
# Session 4, call 1: neighbourhood attention after the per-row interval mask (issue 5).
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
( nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; python -c "import jax,flax;print(jax.__version__, flax.__version__)" ) > $OUT/r/versions.txt 2>&1
date -u > $OUT/r/start.txt
# 1. ptxas report (registers, spills) of the forward kernel, and a first timing
MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_TO=$OUT/r/dump timeout 120 python bench/vision_once.py --case na2d --mode fwd --calls 5 > $OUT/r/once_na2d_fwd.log 2>&1
# 2. the benchmark: dense + pattern_tiled, both cases
timeout 300 python bench/vision_gpu.py $OUT/r/vision --variants pattern_tiled > $OUT/r/vision.log 2>&1
# 3. ncu: list kernels of one NA forward, then the full set on the attention kernel
timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv python bench/vision_once.py --case na2d --mode fwd --calls 1 > $OUT/r/ncu_list.csv 2> $OUT/r/ncu_list.err
NAME=$(python - <<'PY'
import csv, io, os
rows = [l for l in open(os.environ["OUT"] + "/r/ncu_list.csv") if l.startswith('"')]
best = {}
for r in csv.DictReader(io.StringIO("".join(rows))):
    try:
        best[r["Kernel Name"]] = max(best.get(r["Kernel Name"], 0), float(r["Metric Value"].replace(",", "")))
    except (KeyError, ValueError):
        pass
print(max(best, key=best.get) if best else "")
PY
)
echo "kernel: $NAME" > $OUT/r/ncu_kernel.txt
if [ -n "$NAME" ]; then
  timeout 150 ncu --clock-control none --set full -k "regex:^${NAME:0:40}" -s 1 -c 1 -o $OUT/r/na2d_fwd python bench/vision_once.py --case na2d --mode fwd --calls 2 > $OUT/r/ncu_full.log 2>&1
  ncu --import $OUT/r/na2d_fwd.ncu-rep --page details > $OUT/r/ncu_details.txt 2>&1
  ncu --import $OUT/r/na2d_fwd.ncu-rep --page source --csv > $OUT/r/ncu_source.csv 2>/dev/null
fi
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

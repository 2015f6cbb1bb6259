#!/bin/bash
# Session 4, call 3: top-k variants; NA with back-to-back timing (+ 64-key tiles); GPU tests.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 90 python bench/topk_gpu.py > $OUT/r/topk.log 2>&1
timeout 260 python bench/vision_gpu.py $OUT/r/vision --variants pattern_tiled,pattern_tiled_kv64 > $OUT/r/vision.log 2>&1
timeout 200 python -m pytest -q -m gpu tests/test_gpu_suite.py -k "Neighborhood" tests/test_routed.py > $OUT/r/gpu_tests.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

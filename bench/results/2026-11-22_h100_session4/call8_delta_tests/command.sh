#!/bin/bash
# Session 4, call 8: backward delta as a row reduction + separate transpose; GPU tests; MoBA/NSA at 64k.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 280 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py tests/test_routed.py tests/test_nsa.py > $OUT/r/gpu_tests.log 2>&1
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'MoBA(512,NSA' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

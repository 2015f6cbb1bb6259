#!/bin/bash
# Session 6, call 3: the dK/dV kernel with two warpgroups per 64-key block (q split):
# kernel tests against cuDNN, packed/routed selections against the dense mask; q split on/off.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 120 python bench/dkv_split_gpu.py $OUT/r/dkv --option q --sizes 16384,65536 --reps 3 > $OUT/r/dkv.log 2>&1
timeout 330 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py tests/test_packed.py > $OUT/r/gpu_tests.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

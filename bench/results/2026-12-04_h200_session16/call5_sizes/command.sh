#!/bin/bash
# Session 16, call 5 (tree at the commit in commit.txt beside this script). The final kernels:
# GPU test of the gathered dK/dV with the dQ kernel (Config(gpu_gathered_dq=False), through the
# refactored tile_grads); NSA's forward+backward at 16k and 128k, gathered dQ (default) against
# "NSA (dQ kernel)", our dense causal and cuDNN.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session16/call5_sizes/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 90 python -m pytest -q -m gpu tests/test_gathered.py -k "gathered_dkv_on_the_gpu and False" > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 260 python bench/llm_sparse_gpu.py $OUT/r/nsa --sizes 16384,131072 --methods 'NSA train' --nsa-variants 'NSA,NSA (dQ kernel)' --dense ours,cudnn --reps 5 > $OUT/r/nsa.log 2>&1
echo "llm rc=$?" >> $OUT/r/nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

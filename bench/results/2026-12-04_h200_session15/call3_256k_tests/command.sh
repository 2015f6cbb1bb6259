#!/bin/bash
# Session 15, call 3 (tree at the commit in commit.txt beside this script). NSA's forward+backward
# at 256k with the final code (session 14's 256k row predates the warpgroup skips), against our
# dense causal and cuDNN; the kernels' device tests (every dense/sparse kernel test, cuDNN at 32k,
# determinism) and the NSA importance kernel's GPU tests on the final code.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session15/call3_256k_tests/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 190 python bench/llm_sparse_gpu.py $OUT/r/nsa256k --sizes 262144 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 3 > $OUT/r/nsa256k.log 2>&1
echo "llm rc=$?" >> $OUT/r/nsa256k.log
JAXSPARSE_TEST_WORKERS=0 timeout 230 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py > $OUT/r/tests_device.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests_device.log
JAXSPARSE_TEST_WORKERS=0 timeout 100 python -m pytest -q -m gpu tests/test_nsa_importance.py > $OUT/r/tests_importance.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests_importance.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

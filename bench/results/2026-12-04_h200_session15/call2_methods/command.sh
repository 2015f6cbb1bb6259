#!/bin/bash
# Session 15, call 2 (tree at the commit in commit.txt beside this script). The packed NSA-like
# GPU test's routed layout (cut by call 1's time limit); MoBA's forward and NSA's selected branch
# at 64k with the final code (first_selected by words, the forward's warpgroup skips) against our
# dense causal and cuDNN; NSA's forward+backward at 16k and 128k with the new defaults and timing.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session15/call2_methods/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 90 python -m pytest -q -m gpu tests/test_packed.py -k "nsa_like and routed" > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'MoBA(512,3),NSA-selected' --skip 'routed,bq64,XLA gate,importance by calls' --dense ours,cudnn --reps 5 > $OUT/r/llm64k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm64k.log
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/nsa --sizes 16384,131072 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/nsa.log 2>&1
echo "llm rc=$?" >> $OUT/r/nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

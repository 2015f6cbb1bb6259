#!/bin/bash
# Session 11, call 2 (tree at this script's commit; no git commands on the device copy). Every
# other issue-4 method at 64k with the forward selection measure of call 1 (select_fwd), against
# our dense causal in the same run; then PSA's GPU oracle tests again (PSA's tails are pooled by
# selection.pooling.pool since a97749d, after session 10's GPU run of them).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session11/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'AShape,VerticalSlash,MoBA,FlexPrefill,NSA-selected,PSA' --skip 'routed,bq64,XLA gate' --dense ours --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/mid.txt
timeout 150 python -m pytest -q -m gpu tests/test_dynamic_pyramid.py -p no:cacheprovider > $OUT/r/gpu_tests.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

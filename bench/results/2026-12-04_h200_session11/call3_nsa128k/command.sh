#!/bin/bash
# Session 11, call 3 (tree at this script's commit; no git commands on the device copy). NSA's
# forward+backward at 128k on the H200 (H100 rows only so far), against our dense causal.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session11/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 420 python bench/llm_sparse_gpu.py $OUT/r/llm128k --sizes 131072 --methods 'NSA train' --nsa-variants NSA --dense ours --reps 3 > $OUT/r/llm128k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

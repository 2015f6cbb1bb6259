#!/bin/bash
# Session 10, call 4 (tree at this script's commit, sent as a working tree; no git commands on
# the device copy). Call 3 found the radix select slower than the value sort, so the k-th value
# went back to session 9's code (two levels where they apply, else one value sort). Here: the
# four masks at the selections' shapes (the library's own among them), and BlockTopK and the
# Seer gate at 64k with that code.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session10/call4_revert/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 45 python bench/kth_value_gpu.py > $OUT/r/kth_value.jsonl 2> $OUT/r/kth_value.log
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --dense ours --methods 'MInference-BlockTopK,Seer-gate' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 12, call 6 (tree at the commit in commit.txt beside this script). Every issue-4 method
# and NSA's forward+backward at 64k with the session's final code (unstable value sorts, the Seer
# gate ranking logits), timed back to back, against our dense causal and cuDNN.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session12/call6_final64k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 570 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --skip 'routed,bq64,XLA gate' --nsa-variants NSA --reps 5 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

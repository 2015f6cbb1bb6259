#!/bin/bash
# Session 11, call 4 (tree at the commit in commit.txt beside this script; no git commands on the
# device copy). Every issue-4 method and NSA's forward+backward at 64k, timed back to back as the
# attention bench and the anchors are (bench/timing.time_fn; calls 1-3 blocked on every call),
# with the forward selection measure (select_fwd), against our dense causal and cuDNN.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session11/call4_final64k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 560 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --skip 'routed,bq64,XLA gate' --nsa-variants NSA --reps 5 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

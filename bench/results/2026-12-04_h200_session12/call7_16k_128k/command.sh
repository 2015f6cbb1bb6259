#!/bin/bash
# Session 12, call 7 (tree at the commit in commit.txt beside this script). The last of the
# session's device time: every issue-4 method at 16k with the final code (against our dense
# causal and cuDNN), then the methods whose selection changed this session (the Seer gate,
# BlockTopK, FlexPrefill) at 128k against our dense causal, as far as the time allows (rows are
# written as they finish).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session12/call7_16k_128k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm16k --sizes 16384 --skip 'routed,bq64,XLA gate' --nsa-variants NSA --reps 5 > $OUT/r/llm16k.log 2>&1
date -u >> $OUT/r/start.txt
timeout 140 python bench/llm_sparse_gpu.py $OUT/r/llm128k --sizes 131072 --methods 'Seer-gate,MInference-BlockTopK,FlexPrefill' --dense ours --reps 3 > $OUT/r/llm128k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

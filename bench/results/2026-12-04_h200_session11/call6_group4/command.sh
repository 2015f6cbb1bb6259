#!/bin/bash
# Session 11, call 6 (tree at the commit in commit.txt beside this script). BlockTopK and the Seer
# gate at 64k with kth_value's groups of 4 (topk.KTH_GROUP_WIDTH; call 5 measured the masks alone),
# against our dense causal, timed back to back as in call 4.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session11/call6_group4/commit.txt 2>/dev/null)
mkdir -p $OUT/r
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'MInference-BlockTopK,Seer-gate' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

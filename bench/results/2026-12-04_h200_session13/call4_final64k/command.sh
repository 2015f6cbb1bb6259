#!/bin/bash
# Session 13, call 4 (tree at the commit in commit.txt beside this script). The session's final
# code at 64k: NSA's forward+backward and its selected branch (importance kernel on by default)
# against our dense causal and cuDNN in the same run.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session13/call4_final64k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 470 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA-selected,NSA train' --skip 'routed,bq64,importance by calls' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/llm64k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm64k.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

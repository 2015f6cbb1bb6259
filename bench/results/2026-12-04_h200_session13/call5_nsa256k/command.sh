#!/bin/bash
# Session 13, call 5 (tree at the commit in commit.txt beside this script). NSA's forward+backward
# at 256k, where the selection now scores query rows in slices through the importance kernel
# (four slices of 64k rows), against our dense causal and cuDNN in the same run.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session13/call5_nsa256k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 370 python bench/llm_sparse_gpu.py $OUT/r/llm256k --sizes 262144 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 3 > $OUT/r/llm256k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm256k.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 14, call 5 (tree at the commit in commit.txt beside this script). NSA's forward+backward
# at 256k with the library defaults against our dense causal and cuDNN in the same run (the
# cotangent and gates are jit arguments since session 13's last commit).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call5_nsa256k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 520 python bench/llm_sparse_gpu.py $OUT/r/llm256k --sizes 262144 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 3 > $OUT/r/llm256k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm256k.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

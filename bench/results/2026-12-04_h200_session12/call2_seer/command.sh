#!/bin/bash
# Session 12, call 2 (tree at the commit in commit.txt beside this script). The Seer gate at 64k
# ranking the gate's logits (no softmax; nz_ratio needs only each row's order), with 64x64 tiles
# and with 128-row query tiles (bq128), against our dense causal.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session12/call2_seer/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'Seer-gate' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
date -u >> $OUT/r/start.txt
timeout 80 python bench/profile_llm.py $OUT/r/prof_seer --what 'select:Seer-gate(nz=0.1)' > $OUT/r/prof_seer.log 2>&1
date -u > $OUT/r/end.txt
rm -rf $OUT/r/*/trace
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

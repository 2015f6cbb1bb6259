#!/bin/bash
# Session 12, call 1 (tree at the commit in commit.txt beside this script). (1) BlockTopK and the
# Seer gate at 64k end to end with topk.KTH_GROUP_WIDTH = 4 (session 11 timed only the masks);
# (2) where the Seer gate's and NSA's forward selections go (top device ops); (3) NSA
# forward+backward at 128k against cuDNN's dense causal (session 11 ran ours only).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session12/call1_kth_e2e/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'MInference-BlockTopK,Seer-gate' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
date -u >> $OUT/r/start.txt
timeout 80 python bench/profile_llm.py $OUT/r/prof_seer --what select:Seer-gate > $OUT/r/prof_seer.log 2>&1
date -u >> $OUT/r/start.txt
timeout 80 python bench/profile_llm.py $OUT/r/prof_nsa_sel --what select:NSA-selected > $OUT/r/prof_nsa_sel.log 2>&1
date -u >> $OUT/r/start.txt
timeout 220 python bench/llm_sparse_gpu.py $OUT/r/nsa128k --sizes 131072 --methods 'NSA train' --nsa-variants NSA --reps 3 > $OUT/r/nsa128k.log 2>&1
date -u > $OUT/r/end.txt
rm -rf $OUT/r/*/trace
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 21, call 3 (tree at the commit in commit.txt beside this script; run from `git archive`
# of it). Call 2's ptxas: with dQ in dK/dV the 128x128 dK/dV kernel spills 420 bytes (split) or
# 364 (hand-over) at 232 registers a consumer thread. Now FA3's 240 consumer / 24 producer with dQ:
# ptxas again, then NSA and dense causal at 32k with and without dQ in dK/dV.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h100_session21/call3_dq_registers/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 60 python bench/kernel_resources.py --seq 4096 --configs dq_in_dkv,dq_in_dkv_hand_over > $OUT/r/resources.log 2>&1
echo "resources rc=$?" >> $OUT/r/resources.log
date -u >> $OUT/r/start.txt
timeout 100 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 32768 --methods 'NSA train' --nsa-variants 'NSA,NSA (dQ in dK/dV)' --dense ours,ours-dq --reps 3 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 25, call 6 (tree at the commit in commit.txt beside this script). This session's
# two changes to the gathered kernel (two Q/dO slots a warpgroup; items of at most 32 tiles
# where it gives dQ) were timed at 64k only. NSA's step at 128k (4k chunks on the H100):
# library against 'items 256' and 'gathered dq 2 stages' (one slot a warpgroup), beside
# cuDNN.
set -x
D=bench/results/2026-12-05_h100_session25/call6_128k
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm128 --sizes 131072 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,items 256,gathered dq 2 stages' --dense cudnn --reps 3 > $OUT/r/llm128.log 2>&1
echo "llm128 rc=$?" >> $OUT/r/llm128.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

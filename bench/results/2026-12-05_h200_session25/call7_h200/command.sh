#!/bin/bash
# Session 25, call 7 (tree at the commit in commit.txt beside this script), asked of the
# nvidia-h200 kind; it stops at once on another card. This session's changes to the gathered
# kernel were timed on the H100 only: two Q/dO slots a warpgroup (no gain at 4k chunks, the
# H200's chunk) and items of at most 32 tiles. NSA's step at 64k on the H200: library against
# 'gathered dq 2 stages' (one slot) and 'items 256', and 1k chunks (never timed on an H200),
# beside cuDNN.
set -x
D=bench/results/2026-12-05_h200_session25/call7_h200
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
if ! grep -q H200 $OUT/r/nvidia-smi.txt; then echo "not an H200" > $OUT/r/skipped.txt; cd $OUT && tar czf r.tgz r && rm -rf r; exit 0; fi
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 1k tokens)' --nsa-glue 'library,gathered dq 2 stages,items 256' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

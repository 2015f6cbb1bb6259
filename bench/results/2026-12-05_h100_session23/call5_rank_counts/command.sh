#!/bin/bash
# Session 23, call 5 (tree at the commit in commit.txt beside this script), the last device
# minutes. NSA's top-16 of 1,024 blocks by rank counts (bench/topk_gpu.rank_count_first: an
# [n, n] compare per row at each of the two levels, no sort) against the library's two top_k
# sorts and one-hot: (1) alone, 131,072 rows; (2) in NSA's step at 64k (glue 'rank counts'),
# the library now with 1k chunks on an H100, beside cuDNN.
set -x
D=bench/results/2026-12-05_session23/call5_rank_counts
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 60 python bench/topk_gpu.py > $OUT/r/topk.jsonl 2> $OUT/r/topk.log
echo "topk rc=$?" >> $OUT/r/topk.log
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA' --nsa-glue 'library,rank counts' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 13, call 3 (tree at the commit in commit.txt beside this script). NSA's forward+backward
# (importance kernel on by default) at 128k, then 16k, against our dense causal and cuDNN in the
# same run; then the attention bench's jax mode at 4k, the first GPU run of its split into modules
# (and of the split Mosaic GPU entry points, which every row here goes through).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session13/call3_nsa128k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 440 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 131072,16384 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
SEQS=4096 timeout 110 python bench/attention_gpu.py jax $OUT/r/attn > $OUT/r/attn.log 2>&1
echo "attn rc=$?" >> $OUT/r/attn.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

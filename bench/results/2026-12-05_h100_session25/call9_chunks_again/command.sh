#!/bin/bash
# Session 25, call 9 (tree at the commit in commit.txt beside this script). Call 8 put NSA's
# step at 64k in 4k chunks at 27.97 ms (two slots) and 27.77 ms (one slot) beside cuDNN at
# 111.63 ms: with 32-tile items, 4k chunks may now beat the H100's 1k default. Same run:
# 1k (library) and 4k chunks, each with two slots and one, beside cuDNN.
set -x
D=bench/results/2026-12-05_h100_session25/call9_chunks_again
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 175 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 4k tokens)' --nsa-glue 'library,gathered dq 2 stages' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

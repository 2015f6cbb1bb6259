#!/bin/bash
# Session 24, call 5 (tree at the commit in commit.txt beside this script), asked of the
# nvidia-h200 kind (the card is in nvidia-smi.txt). The gathered kernel is back to one CTA a
# work item. On an H100, items in 1k-token chunks beat 4k at 64k (session 23); on the H200
# 4k was best of 2k/4k/8k (session 19) and 1k never ran. (1) The kernel alone at 64k in 1k,
# 2k and 4k chunks. (2) NSA's step at 64k with the library's chunk for this card against 1k
# and 2k, beside our dense causal and cuDNN (call 3 got an H100; this asks again).
set -x
D=bench/results/2026-12-05_h100_session24/call5_h200_chunks
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
if ! grep -q H200 $OUT/r/nvidia-smi.txt; then  # an H100 again: nothing new to time
  echo "not an H200" > $OUT/r/end.txt; cd $OUT && tar czf r.tgz r && rm -rf r; exit 0
fi
timeout 120 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 2k chunks,dq 4k chunks (library)' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 270 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 1k tokens),NSA (items by 2k tokens)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

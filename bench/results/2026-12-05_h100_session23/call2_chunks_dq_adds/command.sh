#!/bin/bash
# Session 23, call 2 (tree at the commit in commit.txt beside this script), asked of the
# nvidia-h200 kind (the card is in nvidia-smi.txt). (1) The gathered kernel's modes at 64k with
# ptxas's report (registers, spills) and two timing-only modes that leave the dQ reduce-adds
# out. (2) NSA's step at 64k with the items in 1k, 2k and 4k (library) token chunks, beside
# our dense causal and cuDNN; (3) at 128k, 1k against the library's 4k, beside cuDNN.
set -x
D=bench/results/2026-12-05_session23/call2_chunks_dq_adds
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
MOSAIC_GPU_DUMP_PTXAS=1 timeout 170 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 1k tokens),NSA (items by 2k tokens)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm128 --sizes 131072 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 1k tokens)' --dense cudnn --reps 3 > $OUT/r/llm128.log 2>&1
echo "llm128 rc=$?" >> $OUT/r/llm128.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

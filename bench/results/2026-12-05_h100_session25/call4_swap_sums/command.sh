#!/bin/bash
# Session 25, call 4 (tree at the commit in commit.txt beside this script). At a work
# item's end the gathered kernel's second warpgroup handed its dK and dV (64 KB of float32)
# to the first through SMEM, which added both sums while the second idled. Now they swap
# halves: the second hands over dK, the first dV, and each adds one sum (SWAP_SUMS).
# (1) The gathered GPU tests against the dense f32 oracle. (2) The kernel alone at 64k:
#     library against 'sums by one warpgroup'. (3) NSA's step at 64k: library against glue
#     'gathered sums by one warpgroup' and 'items 32' (long items split in four), beside
#     our dense kernel and cuDNN.
set -x
D=bench/results/2026-12-05_h100_session25/call4_swap_sums
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u >> $OUT/r/start.txt
timeout 100 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks sums by one warpgroup,dq 1k chunks without dq adds' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 260 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,gathered sums by one warpgroup,items 32' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

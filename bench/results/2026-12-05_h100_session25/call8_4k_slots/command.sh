#!/bin/bash
# Session 25, call 8 (tree at the commit in commit.txt beside this script; call 7 asked for
# an H200 and got an H100). With 4k-token chunks (the H100 from 128k, the H200 always) the
# second Q/dO slot did not pay in calls 1 and 6. (1) The kernel alone at 64k, 4k chunks,
# two slots against one. (2) NSA's step at 64k in 4k chunks, two slots against one, beside
# cuDNN.
set -x
D=bench/results/2026-12-05_h100_session25/call8_4k_slots
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 80 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 4k chunks (library),dq 4k chunks one slot a warpgroup' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
timeout 170 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA (items by 4k tokens)' --nsa-glue 'library,gathered dq 2 stages' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 23, call 4 (tree at the commit in commit.txt beside this script). Call 3 (H100): dQ
# in two column halves spilled more (228 B against 196) and ran slower, so it was dropped. Here
# the gathered kernel's registers: consumers 240 a thread and the producer 24 (FA3's split)
# against the library's 232/40 (backward_dkv_gathered.REGISTERS). (1) Its modes at 64k with
# ptxas's report. (2) NSA's step at 64k, 4k (library) and 1k chunks, with each register split.
set -x
D=bench/results/2026-12-05_session23/call4_regs240
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
MOSAIC_GPU_DUMP_PTXAS=1 timeout 110 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks regs 240,dq 4k chunks (library),dq 4k chunks regs 240' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 230 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 1k tokens)' --nsa-glue 'library,gathered regs 240' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

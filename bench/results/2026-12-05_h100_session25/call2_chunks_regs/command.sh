#!/bin/bash
# Session 25, call 2 (tree at the commit in commit.txt beside this script). Call 1 gave the
# gathered kernel two Q/dO slots a warpgroup: 7.92 against 8.21 ms alone (1k chunks), NSA's
# step 28.79 against 29.02 ms. With the loads hidden, do smaller chunks (512 tokens: more
# items, each chunk's dQ rows hotter in L2) or FA3's 240/24 register split now pay?
# (1) The kernel alone at 64k in those modes. (2) NSA's step at 64k: the library (1k chunks)
#     and 512-token chunks, each with the library's registers and glue 'gathered regs 240',
#     beside cuDNN.
set -x
D=bench/results/2026-12-05_h100_session25/call2_chunks_regs
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 120 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 512 chunks,dq 2k chunks,dq 1k chunks regs 240,dq 1k chunks one slot a warpgroup' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 512 tokens)' --nsa-glue 'library,gathered regs 240' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

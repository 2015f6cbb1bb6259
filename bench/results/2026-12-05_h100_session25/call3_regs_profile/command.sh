#!/bin/bash
# Session 25, call 3 (tree at the commit in commit.txt beside this script). The gathered
# kernel now has two Q/dO slots a warpgroup (call 1) and 240/24 registers (call 2's faster
# split, now the default). (1) Its GPU tests against the dense f32 oracle. (2) The kernel
# alone: library, without its dQ adds (timing only), live items only, and 232/40 registers.
# (3) NSA's step at 64k: library against one slot a warpgroup ('gathered dq 2 stages') and
#     232/40 registers ('gathered regs 232'), beside our dense kernel and cuDNN.
# (4) The step's profile (top device ops), for what is left.
set -x
D=bench/results/2026-12-05_h100_session25/call3_regs_profile
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u >> $OUT/r/start.txt
timeout 100 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks without dq adds,dq 1k chunks live items only,dq 1k chunks regs 232' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,gathered dq 2 stages,gathered regs 232' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 120 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

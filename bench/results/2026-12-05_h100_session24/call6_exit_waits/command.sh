#!/bin/bash
# Session 24, call 6 (tree at the commit in commit.txt beside this script). The gathered
# dK/dV kernel runs one CTA per work item (~40k live at 64k) and each waited for its dK/dV
# reduce-adds to land before exiting; the forward has always waited only for the SMEM reads.
# Now the gathered and dQ kernels' CTAs do the same (common.EXIT_WAIT_READ_ONLY).
# (1) The gathered GPU tests against the dense f32 oracle (one case with the dQ kernel).
# (2) The kernel alone at 64k, read-only against full exit waits. (3) NSA's step at 64k,
#     library against glue 'full exit waits', beside cuDNN.
set -x
D=bench/results/2026-12-05_h100_session24/call6_exit_waits
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u >> $OUT/r/start.txt
timeout 90 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks full exit wait' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,full exit waits' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

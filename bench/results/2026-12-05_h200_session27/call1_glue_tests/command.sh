#!/bin/bash
# Session 27, call 1 on an H200 (no H100 came; tree at the commit in commit.txt beside this script). First device
# time since session 25. (1) The gathered kernel's GPU oracle tests, the one-slot case
# (DQ_STAGES=2 at 512-token chunks) included, never run before. (2) BlockMask & Causal on
# the Mosaic GPU kernels against the oracle (new in session 26). (3) first_selected
# (popcount prefix sums) beside the 16 passes, kernel alone. (4) NSA's 64k step: library
# glue (session 26's flat row sorts and one-pass first_selected) against the old forms and
# against the one-slot dQ, beside cuDNN, one process. (5) With the time left: MoBA's and
# vertical-slash's rows with the new row sorts against the old, and a profile of NSA's step.
set -x
D=bench/results/2026-12-05_h200_session27/call1_glue_tests
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test_gathered.log 2>&1
echo "rc=$?" >> $OUT/r/test_gathered.log
date -u >> $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 100 python -m pytest -q -m gpu tests/test_gpu_suite.py -k BlockMask > $OUT/r/test_blockmask.log 2>&1
echo "rc=$?" >> $OUT/r/test_blockmask.log
date -u >> $OUT/r/start.txt
timeout 60 python bench/gathered_tiles_gpu.py --sizes 65536 > $OUT/r/tiles.log 2>&1
echo "rc=$?" >> $OUT/r/tiles.log
date -u >> $OUT/r/start.txt
timeout 220 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,row sorts+first by passes,gathered dq 2 stages' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
DEADLINE=${DEADLINE:-565}  # seconds from the start, for the optional steps
left() { echo $(( DEADLINE - SECONDS < $1 ? DEADLINE - SECONDS : $1 )); }
date -u >> $OUT/r/start.txt
[ $(left 150) -gt 60 ] && timeout $(left 150) python bench/llm_sparse_gpu.py $OUT/r/methods --sizes 65536 --methods 'MoBA,VerticalSlash' --skip 'XLA gate,4096,1 call' --method-glue 'library,row sorts+first by passes' --dense cudnn --reps 5 > $OUT/r/methods.log 2>&1
echo "methods rc=$?" >> $OUT/r/methods.log
date -u >> $OUT/r/start.txt
[ $(left 120) -gt 60 ] && timeout $(left 120) python bench/profile_llm.py $OUT/r/prof --what nsa > $OUT/r/prof.log 2>&1
echo "prof rc=$?" >> $OUT/r/prof.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

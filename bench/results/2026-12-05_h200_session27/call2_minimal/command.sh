#!/bin/bash
# Session 27, call 2: call 1 trimmed to what fits the device time left after failed starts
# (tree at the commit in commit.txt). (1) The gathered kernel's GPU oracle tests, the
# one-slot case included. (2) NSA's 64k step: library glue against session 25's forms
# (row sorts+first by passes) and the one-slot dQ (gathered dq 2 stages), beside cuDNN.
# (3) BlockMask & Causal on the kernels against the oracle, if time is left.
set -x
D=bench/results/2026-12-05_h200_session27/call2_minimal
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
DEADLINE=${DEADLINE:-380}
left() { echo $(( DEADLINE - SECONDS < $1 ? DEADLINE - SECONDS : $1 )); }
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 110 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test_gathered.log 2>&1
echo "rc=$?" >> $OUT/r/test_gathered.log
date -u >> $OUT/r/start.txt
timeout $(left 200) python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,row sorts+first by passes,gathered dq 2 stages' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
[ $(left 80) -gt 40 ] && JAXSPARSE_TEST_WORKERS=0 timeout $(left 80) python -m pytest -q -m gpu tests/test_gpu_suite.py -k BlockMask > $OUT/r/test_blockmask.log 2>&1
echo "rc=$?" >> $OUT/r/test_blockmask.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

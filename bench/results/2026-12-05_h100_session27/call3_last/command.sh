#!/bin/bash
# Session 27, call 3: the last device time (about 5 minutes after failed starts). NSA's 64k
# step first: library glue against session 25's (row sorts+first by passes), beside cuDNN;
# then the gathered kernel's GPU oracle tests (one-slot case included) with the time left.
set -x
D=bench/results/2026-12-05_h100_session27/call3_last
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
DEADLINE=${DEADLINE:-200}
left() { echo $(( DEADLINE - SECONDS < $1 ? DEADLINE - SECONDS : $1 )); }
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout $(left 170) python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,row sorts+first by passes' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
[ $(left 110) -gt 30 ] && JAXSPARSE_TEST_WORKERS=0 timeout $(left 110) python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test_gathered.log 2>&1
echo "rc=$?" >> $OUT/r/test_gathered.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 28, call 3 (tree at the commit in commit.txt beside this script). Calls 1-2 put
# NSA's 64k step at 4.05-4.13x cuDNN in six processes. The final code at 16k and 128k beside
# cuDNN, then the GPU test suite as far as time allows.
set -x
D=bench/results/2026-12-06_h100_session28/call3_sizes
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
END=$((SECONDS + ${BUDGET:-570}))  # BUDGET: seconds this call may take
left() { [ $((END - SECONDS)) -gt "$1" ]; }
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
left 100 && { timeout $((END - SECONDS - 5)) python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 16384,131072 --methods 'NSA train' \
    --nsa-variants NSA --nsa-glue library --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/llm.log; }
left 60 && { JAXSPARSE_TEST_WORKERS=0 timeout $((END - SECONDS - 5)) python -m pytest -q -m gpu tests/test_gpu_suite.py > $OUT/r/gpu_suite.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/gpu_suite.log; }
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

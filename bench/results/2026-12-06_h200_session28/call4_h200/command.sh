#!/bin/bash
# Session 28, call 4 (tree at the commit in commit.txt beside this script), on an H200:
# NSA's 64k step with the final defaults beside cuDNN and our dense causal kernel (the H200
# has not run the final form yet; the H100 did in calls 1-3).
set -x
D=bench/results/2026-12-06_h200_session28/call4_h200
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
END=$((SECONDS + ${BUDGET:-570}))  # BUDGET: seconds this call may take
left() { [ $((END - SECONDS)) -gt "$1" ]; }
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
left 30 && { timeout $((END - SECONDS - 5)) python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' \
    --nsa-variants NSA --nsa-glue library --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/llm.log; }
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 28, call 2 (tree at the commit in commit.txt beside this script). Call 1 put NSA's
# 64k step (library glue) at 4.06x cuDNN twice (26.99 / 109.53 ms and 27.09 / 110.09 ms).
# Is the 4x target robust? The same measurement again, each run a process of its own.
set -x
D=bench/results/2026-12-06_h100_session28/call2_repeat
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
END=$((SECONDS + ${BUDGET:-570}))  # BUDGET: seconds this call may take
left() { [ $((END - SECONDS)) -gt "$1" ]; }
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
for i in 1 2 3 4; do
  left 75 && { timeout $((END - SECONDS - 5)) python bench/llm_sparse_gpu.py $OUT/r/run$i --sizes 65536 --methods 'NSA train' \
      --nsa-variants NSA --nsa-glue library --dense cudnn --reps 5 > $OUT/r/run$i.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/run$i.log; }
done
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

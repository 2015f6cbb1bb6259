#!/bin/bash
# Session 16, call 3 (tree at the commit in commit.txt beside this script). Where the gathered
# dK/dV kernel with dQ spends its time: NSA's 64k step with the full kernel, without the TMA
# reduce-adds, without the dQ wgmma, and with the dQ kernel (diag.py beside this script; a
# temporary switch in backward_dkv_gathered.py); each timed with >= 3 and >= 20 calls a sample.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session16/call3_dq_diag/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 400 python bench/results/2026-12-04_h200_session16/call3_dq_diag/diag.py $OUT/r/diag.jsonl > $OUT/r/diag.log 2>&1
echo "diag rc=$?" >> $OUT/r/diag.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

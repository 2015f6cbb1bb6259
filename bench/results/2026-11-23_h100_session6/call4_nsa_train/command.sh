#!/bin/bash
# Session 6, call 4: NSA forward+backward at 64k: packed (default), routed, and packed with
# one dK/dV warpgroup per 64-key block, side by side.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 560 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

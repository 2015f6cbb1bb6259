#!/bin/bash
# Session 6, call 7: NSA forward+backward (packed selected branch, final code) at 16k and 128k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 560 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 16384,131072 --methods 'NSA train' --nsa-variants 'NSA' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

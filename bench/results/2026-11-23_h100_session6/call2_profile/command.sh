#!/bin/bash
# Session 6, call 2: where NSA's forward+backward goes with the packed selected branch
# (named kernels), and the selected branch with 64-row tiles.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/profile_llm.py $OUT/r/prof --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof/trace
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA-selected' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

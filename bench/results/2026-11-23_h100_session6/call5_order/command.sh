#!/bin/bash
# Session 6, call 5: packed NSA with the kernels' CTAs in block order (new default for packed
# selections) vs heaviest lists first; where NSA's step goes now.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (heavy first)' --reps 3 > $OUT/r/llm.log 2>&1
timeout 200 python bench/profile_llm.py $OUT/r/prof --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof/trace
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

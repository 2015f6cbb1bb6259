#!/bin/bash
# Session 7, call 3 (tree at 450d64d): sort-free selections (lists by count + scatter, rank/cover
# masks from one value sort, slash sums by a skew). GPU tests of the kernels' consumers of the
# device lists (packed NSA, routed MoBA/NSA); the methods at 16k, 64k and 128k; NSA train.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=450d64d
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 100 python -m pytest -q -m gpu -p no:cacheprovider tests/test_packed.py tests/test_routed.py > $OUT/r/gpu_tests.log 2>&1
M='AShape,BlockTopK,MoBA(512,3),FlexPrefill,NSA-selected,Seer-gate,NSA train'
S='routed,bq64,XLA gate,1 call'
timeout 220 python bench/llm_sparse_gpu.py $OUT/r/llm16k64k --sizes 16384,65536 --methods "$M" --skip "$S" --nsa-variants NSA --reps 3 > $OUT/r/llm16k64k.log 2>&1
timeout 190 python bench/llm_sparse_gpu.py $OUT/r/llm128k --sizes 131072 --methods "$M" --skip "$S" --nsa-variants NSA --reps 3 > $OUT/r/llm128k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

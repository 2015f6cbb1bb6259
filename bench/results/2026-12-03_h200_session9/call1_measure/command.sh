#!/bin/bash
# Session 9, call 1 (tree at 6d054c6 + this script): the working tree as sent (no git commands on
# the device copy). PSA's GPU tests against the oracle; at 64k the selections changed after
# session 8's last measurement (top-k mask from the k-th value: BlockTopK, Seer gate,
# vertical-slash, NSA's bits) and NSA's forward+backward; a profile of NSA's training step.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=6d054c6
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 170 python -m pytest -q -m gpu -p no:cacheprovider tests/test_dynamic_pyramid.py > $OUT/r/gpu_tests.log 2>&1
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'MInference-BlockTopK,Seer-gate,MInference-VerticalSlash,NSA train,NSA-selected' --skip 'routed,bq64,XLA gate' --nsa-variants NSA --reps 3 > $OUT/r/llm64k.log 2>&1
timeout 120 python bench/profile_llm.py $OUT/r/prof_nsa --what nsa --seq 65536 > $OUT/r/prof_nsa.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r  # traces stay behind (too large to come back)

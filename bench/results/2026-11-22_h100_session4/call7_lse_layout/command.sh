#!/bin/bash
# Session 4, call 7: pair lse permuted pair-axis-major; GPU tests; NSA profile; MoBA/NSA at 64k.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python -m pytest -q -m gpu tests/test_routed.py tests/test_nsa.py > $OUT/r/gpu_tests.log 2>&1
timeout 120 python bench/profile_llm.py $OUT/r/prof_nsa64k --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof_nsa64k/trace
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'MoBA(512,NSA' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

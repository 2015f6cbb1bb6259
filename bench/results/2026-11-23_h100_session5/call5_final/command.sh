#!/bin/bash
# Session 5, call 5 (tree at 2c56b21, the session's code): the vision module tests on the
# H100 (highest-precision float32 matmuls); NSA at 64k (selected branch, forward+backward); MoBA at 128k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=2c56b21
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 90 python -m pytest -q tests/test_nn_vision.py -k neighborhood > $OUT/r/nn_vision.log 2>&1
timeout 280 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA' --reps 3 > $OUT/r/llm64k.log 2>&1
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm128k --sizes 131072 --methods 'MoBA(512,3)' --reps 3 > $OUT/r/llm128k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

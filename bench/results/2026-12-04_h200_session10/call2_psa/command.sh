#!/bin/bash
# Session 10, call 2 (same tree as call 1): PSA's GPU tests against the dense oracle (causal at
# 4096; bidirectional at the ragged 4093, whose tails are one-key reference calls), unbuffered
# so that a timeout keeps what ran; PSA at a ragged 64k (65535) on the kernels.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session10/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 440 python -u -m pytest -v -m gpu -p no:cacheprovider tests/test_dynamic_pyramid.py > $OUT/r/gpu_tests.log 2>&1
date -u > $OUT/r/mid.txt
timeout 140 python bench/llm_sparse_gpu.py $OUT/r/llm64k_ragged --sizes 65535 --methods 'PSA' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm64k_ragged.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

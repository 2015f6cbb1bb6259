#!/bin/bash
# Session 9, call 2 (the session's last device time; tree at this script's commit): PSA's GPU test
# (causal) against the oracle, unbuffered so that a timeout keeps what ran; at 64k the two
# selections changed in this session (NSA's token-major importance, the k-th value without
# a key-value sort: NSA, Seer gate) and NSA's forward+backward; vertical-slash and PSA at 16k
# and 128k, not yet measured on the kernels; where the Seer gate's selection time goes.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-03_h200_session9/call2_final/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 120 python -u -m pytest -q -m gpu -p no:cacheprovider tests/test_dynamic_pyramid.py -k "on_the_gpu and True" > $OUT/r/gpu_tests.log 2>&1
timeout 160 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA train,NSA-selected,Seer-gate' --skip 'routed,bq64,XLA gate' --nsa-variants NSA --reps 3 > $OUT/r/llm64k.log 2>&1
timeout 190 python bench/llm_sparse_gpu.py $OUT/r/llm16k128k --sizes 16384,131072 --methods 'MInference-VerticalSlash,PSA' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm16k128k.log 2>&1
timeout 50 python bench/profile_llm.py $OUT/r/prof_seer --what select:Seer-gate --seq 65536 > $OUT/r/prof_seer.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

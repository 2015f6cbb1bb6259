#!/bin/bash
# Session 7, call 1 (tree at 5aafa1e, session 6's code): the first run on an H200. Environment;
# every issue-4 method (variants skipped) at 16k and 64k; NSA's forward+backward at both.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=5aafa1e
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
{ nvidia-smi; python3 -m pip show jax jaxlib flax optax torch 2>/dev/null | grep -E '^(Name|Version)'; } > $OUT/r/env.txt 2>&1
S='routed,bq64,XLA gate,1 call'
timeout 170 python bench/llm_sparse_gpu.py $OUT/r/llm16k --sizes 16384 --skip "$S" --nsa-variants NSA --reps 3 > $OUT/r/llm16k.log 2>&1
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --skip "$S" --nsa-variants NSA --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

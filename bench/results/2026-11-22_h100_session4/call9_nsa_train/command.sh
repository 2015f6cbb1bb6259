#!/bin/bash
# Session 4, call 9: NSA forward+backward at 64k after the delta change (dense baselines + nsa_train only).
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 280 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'no-method' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

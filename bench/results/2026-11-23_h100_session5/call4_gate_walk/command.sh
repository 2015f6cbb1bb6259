#!/bin/bash
# Session 5, call 4 (tree at e070f2c): gate kernel walking row blocks; pooling as a
# contraction. GPU tests of the gate and routed MoBA; MoBA selection by stage; MoBA at 64k and 128k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=e070f2c
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python -m pytest -q -m gpu tests/test_gate_topk.py tests/test_routed.py -k "gpu and not nsa" > $OUT/r/gpu_tests.log 2>&1
timeout 60 python bench/routed_breakdown.py $OUT/r/breakdown --seq 65536 > $OUT/r/breakdown.log 2>&1
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536,131072 --methods 'MoBA(512' --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

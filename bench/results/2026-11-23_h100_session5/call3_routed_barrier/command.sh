#!/bin/bash
# Session 5, call 3 (tree at ef130ee): routed gathers outside the reductions (barrier);
# NSA GPU test; MoBA + NSA at 64k (NSA fwd+bwd row); MoBA selection stage by stage.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=ef130ee
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 150 python -m pytest -q -m gpu tests/test_routed.py -k "nsa" > $OUT/r/gpu_tests.log 2>&1
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'MoBA(512,NSA' --reps 3 > $OUT/r/llm.log 2>&1
timeout 100 python bench/routed_breakdown.py $OUT/r/breakdown --seq 65536 > $OUT/r/breakdown.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

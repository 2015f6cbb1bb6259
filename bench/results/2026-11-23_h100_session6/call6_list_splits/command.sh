#!/bin/bash
# Session 6, call 6: dK/dV lists shared by P CTAs (packed NSA: P = 8 at 64k) vs whole and 4;
# GPU tests of the packed path and the kernels (GQA shares now summed with the splits').
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dK/dV lists whole),NSA (dK/dV lists in 4)' --reps 3 > $OUT/r/llm.log 2>&1
timeout 240 python -m pytest -q -m gpu tests/test_packed.py tests/test_pallas_gpu_device.py -k "nsa_like or gqa or determin or random_block" > $OUT/r/gpu_tests.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

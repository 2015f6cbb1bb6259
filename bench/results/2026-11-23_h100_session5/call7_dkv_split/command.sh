#!/bin/bash
# Session 5, call 7 (tree at 3e1f5c4): dK/dV one CTA per query head. Kernel tests against
# cuDNN (GQA included) and NSA's gradients on the H100; split vs not, side by side; NSA at 64k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=3e1f5c4
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 180 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py > $OUT/r/gpu_tests_device.log 2>&1
timeout 100 python -m pytest -q -m gpu tests/test_routed.py -k nsa > $OUT/r/gpu_tests_nsa.log 2>&1
timeout 120 python bench/dkv_split_gpu.py $OUT/r/dkv --sizes 16384,65536 --reps 3 > $OUT/r/dkv.log 2>&1
timeout 190 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods NSA --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

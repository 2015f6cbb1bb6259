#!/bin/bash
# Session 5, call 2 (tree at e848153): MoBA's fused gate + top-k kernel: GPU tests,
# MoBA at 64k/128k (fused vs XLA gate), a device profile of MoBA at 64k; NA pattern_tiled again.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=e848153
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 240 python -m pytest -q -m gpu tests/test_gate_topk.py tests/test_routed.py -k "gpu" > $OUT/r/gpu_tests.log 2>&1
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536,131072 --methods 'MoBA(512' --reps 3 > $OUT/r/llm.log 2>&1
timeout 120 python bench/profile_llm.py $OUT/r/prof_moba64k --what moba --seq 65536 > $OUT/r/prof_moba64k.log 2>&1
rm -rf $OUT/r/prof_moba64k/trace
timeout 150 python bench/vision_gpu.py $OUT/r/vision --variants pattern_tiled > $OUT/r/vision.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

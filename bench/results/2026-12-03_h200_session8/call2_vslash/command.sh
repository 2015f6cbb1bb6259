#!/bin/bash
# Session 8, call 2 (tree at 9f5ae7b): vertical-slash on the GPU kernels (diagonal/key bitmaps,
# gathered columns with position segment ids). GPU tests, then both forms at 16k and 64k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=9f5ae7b
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python -m pytest -q -m gpu -p no:cacheprovider tests/test_bitmaps.py > $OUT/r/gpu_tests.log 2>&1
timeout 260 python bench/llm_sparse_gpu.py $OUT/r/llm16k64k --sizes 16384,65536 --methods 'MInference-VerticalSlash' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm16k64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

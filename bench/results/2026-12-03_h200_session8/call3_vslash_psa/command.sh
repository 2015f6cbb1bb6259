#!/bin/bash
# Session 8, call 3 (tree at 10e324d + this file): vertical-slash's exclude mode fixed; PSA per
# level on the kernels. GPU tests, then both vertical-slash forms and PSA at 16k and 64k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=10e324d
mkdir -p $OUT/r
# Run the committed tree: drop uncommitted edits to the library and tests in this copy.
git status --short > $OUT/r/tree_before.txt 2>&1; git checkout -- jaxsparse tests >> $OUT/r/tree_before.txt 2>&1; git status --short > $OUT/r/tree.txt 2>&1
date -u > $OUT/r/start.txt
timeout 220 python -m pytest -q -m gpu -p no:cacheprovider tests/test_bitmaps.py tests/test_dynamic_pyramid.py > $OUT/r/gpu_tests.log 2>&1
timeout 260 python bench/llm_sparse_gpu.py $OUT/r/llm16k64k --sizes 16384,65536 --methods 'MInference-VerticalSlash,PSA' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm16k64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

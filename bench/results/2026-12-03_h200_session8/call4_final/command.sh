#!/bin/bash
# Session 8, call 4 (tree at da08b4f + results): the working tree as sent (no git commands: the
# device copy's .git is stale). GPU tests of the bitmaps and PSA per level; at 64k both
# vertical-slash forms, PSA, and the selections with less device work (FlexPrefill, BlockTopK).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=da08b4f
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests/test_bitmaps.py tests/test_dynamic_pyramid.py > $OUT/r/gpu_tests.log 2>&1
timeout 210 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'MInference-VerticalSlash,PSA,FlexPrefill,MInference-BlockTopK' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

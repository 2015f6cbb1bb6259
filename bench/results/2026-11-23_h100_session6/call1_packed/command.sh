#!/bin/bash
# Session 6, call 1: NSA's selection packed query-major (GQA heads as tile rows, row words).
# GPU tests of the packed and routed layouts against the dense f32 mask, NSA's branches;
# then NSA at 64k, both layouts side by side.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python -m pytest -q -m gpu tests/test_packed.py "tests/test_routed.py::test_nsa_kernels_on_the_gpu_match_the_xla_path" > $OUT/r/gpu_tests.log 2>&1
timeout 360 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods NSA --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

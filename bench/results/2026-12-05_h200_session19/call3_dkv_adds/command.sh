#!/bin/bash
# Session 19, call 3 (tree at the commit in commit.txt beside this script). The gathered kernel's dK/dV
# by TMA reduce-adds into float32 sums (ADD_DKV, new) and items in 4k-token chunks (now the default):
# GPU tests against the dense f32 mask, then NSA's forward+backward at 64k: the default and items in
# block order, each with the adds and with per-item partial dK/dV (call 2's form), beside our dense
# causal kernel and cuDNN in one process; then the default against block order at 16k and 128k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h200_session19/call3_dkv_adds/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 110 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
date -u >> $OUT/r/start.txt
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by blocks)' --dense ours,cudnn --reps 5 --nsa-glue 'library,dkv partials' > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm_lengths --sizes 16384,131072 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by blocks)' --dense ours --reps 3 > $OUT/r/llm_lengths.log 2>&1
echo "llm_lengths rc=$?" >> $OUT/r/llm_lengths.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 19, call 2 (tree at the commit in commit.txt beside this script). The gathered dK/dV's work
# items in token chunks (Config.gpu_gathered_chunk): GPU tests against the dense f32 mask (block order
# and chunks of 512), then NSA's forward+backward at 64k with items in chunks of 2k, 4k and 8k tokens
# beside the library's block order, our dense causal kernel and cuDNN in one process; the profile of
# the 4k variant's step.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h200_session19/call2_item_chunks/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
date -u >> $OUT/r/start.txt
timeout 280 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 2k tokens),NSA (items by 4k tokens),NSA (items by 8k tokens)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 100 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa --nsa-variant 'NSA (items by 4k tokens)' > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

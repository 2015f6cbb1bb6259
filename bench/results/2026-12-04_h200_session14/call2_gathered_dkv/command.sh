#!/bin/bash
# Session 14, call 2 (tree at the commit in commit.txt beside this script). The gathered dK/dV
# kernel's first GPU run: its GPU test and the packed path's; NSA's forward+backward at 64k with
# the packed and the gathered dK/dV against our dense causal and cuDNN; the gathered step's profile.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call2_gathered_dkv/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py tests/test_packed.py > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 280 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (gathered dK/dV)' --dense ours,cudnn --reps 5 > $OUT/r/llm64k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm64k.log
timeout 110 python bench/profile_llm.py $OUT/r/profile_gathered --what nsa --nsa-variant 'NSA (gathered dK/dV)' > $OUT/r/profile_gathered.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_gathered.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

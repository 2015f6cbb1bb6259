#!/bin/bash
# Session 14, call 6 (tree at the commit in commit.txt beside this script). The dQ kernel's
# warpgroups skip list entries none of their tokens chose: GPU tests of the packed path; NSA's
# forward+backward at 64k (defaults) against our dense causal and cuDNN; the 64k step's profile.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call6_dq_skip/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py tests/test_packed.py > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/llm64k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm64k.log
timeout 100 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

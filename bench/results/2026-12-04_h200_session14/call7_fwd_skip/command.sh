#!/bin/bash
# Session 14, call 7 (tree at the commit in commit.txt beside this script). The forward kernel's
# warpgroups also skip list entries none of their tokens chose: GPU tests of the packed path;
# NSA's forward+backward with the library defaults at 64k, 16k and 128k against our dense causal
# and cuDNN; the 64k step's profile.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call7_fwd_skip/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py tests/test_packed.py > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 260 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536,16384,131072 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
timeout 100 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

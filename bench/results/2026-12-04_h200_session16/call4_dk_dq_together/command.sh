#!/bin/bash
# Session 16, call 4 (tree at the commit in commit.txt beside this script). The gathered kernel's
# dK and dQ wgmmas now read dS^T from SMEM, issued back to back and waited for once (call 3's
# diagnostic switch removed). GPU test of the gathered dQ; NSA's forward+backward at 64k against
# "NSA (dQ kernel)", our dense causal and cuDNN; the 64k step's profile.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session16/call4_dk_dq_together/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k "gathered_dkv_on_the_gpu and True" > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dQ kernel)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
timeout 100 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

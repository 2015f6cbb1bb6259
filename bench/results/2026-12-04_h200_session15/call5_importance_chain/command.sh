#!/bin/bash
# Session 15, call 5 (tree at the commit in commit.txt beside this script). The importance
# kernel's weight wgmmas chain into accumulators across its head loop: its GPU tests;
# NSA's forward+backward at 64k against our dense causal and cuDNN; the 64k step's profile.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session15/call5_importance_chain/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 100 python -m pytest -x -q -m gpu tests/test_nsa_importance.py > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
timeout 90 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

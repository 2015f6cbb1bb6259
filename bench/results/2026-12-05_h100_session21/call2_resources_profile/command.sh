#!/bin/bash
# Session 21, call 2 (tree at the commit in commit.txt beside this script). Why the dK/dV kernel
# giving dQ is slower (call 1: dense causal 64k fwd+bwd 157.2 against 125.1 ms): ptxas's registers
# and spills for our dense causal kernels with and without it; NSA at 64k with each warpgroup adding
# its own dQ tile ('dq adds apart') beside the hand-over and cuDNN; the profile of NSA's default
# 64k step on the H100 with its HLO; the two token-major gathered GPU tests call 1 had no time for.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h100_session21/call2_resources_profile/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 100 python bench/kernel_resources.py --seq 4096 > $OUT/r/resources.log 2>&1
echo "resources rc=$?" >> $OUT/r/resources.log
date -u >> $OUT/r/start.txt
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA (dQ in dK/dV)' --dense cudnn --reps 3 --nsa-glue 'library,dq adds apart' > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 120 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa --hlo > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u >> $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 110 python -m pytest -q -m gpu 'tests/test_gathered.py::test_gathered_dkv_on_the_gpu[True-512-True]' 'tests/test_gathered.py::test_gathered_dkv_on_the_gpu[True-0-True]' > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

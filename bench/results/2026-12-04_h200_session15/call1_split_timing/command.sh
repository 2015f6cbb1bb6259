#!/bin/bash
# Session 15, call 1 (tree at the commit in commit.txt beside this script). GPU tests of the
# changed dK/dV default (one CTA per kv head for long key sequences) and of session 14's last
# refactor; NSA's forward+backward at 64k with the new defaults against "NSA (dK/dV per query
# head)" (session 14's default), our dense causal and cuDNN, timed with at least 3 back-to-back
# calls per sample; the same NSA row timed as before (--min-iters 1); the 64k step's profile + HLO.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session15/call1_split_timing/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 200 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py tests/test_routed.py tests/test_gathered.py tests/test_packed.py -k "nsa_kernels or window_segments or deterministic or gathered_dkv or nsa_like" > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dK/dV per query head)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
timeout 90 python bench/llm_sparse_gpu.py $OUT/r/llm_blocking --sizes 65536 --methods 'NSA train' --nsa-variants NSA --dense ours --reps 5 --min-iters 1 > $OUT/r/llm_blocking.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm_blocking.log
timeout 100 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa --hlo > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

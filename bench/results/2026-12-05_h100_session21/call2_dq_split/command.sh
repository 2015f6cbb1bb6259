#!/bin/bash
# Session 21, call 2 (tree at the commit in commit.txt beside this script). Call 1: the dK/dV kernel
# giving dQ was slower (dense causal 64k fwd+bwd 157.2 against 125.1 ms, H100). New: FA3's column
# split (each warpgroup half of dQ's columns over both key tiles, [64, 64] accumulators, no
# hand-over). GPU tests of the option; NSA at 64k with the split beside our dense causal (with and
# without) and cuDNN (call 1's 'NSA (dQ in dK/dV)' row is the hand-over); ptxas's registers and
# spills with no dQ, the split and the hand-over. (No profile: device time.)
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h100_session21/call2_dq_split/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 100 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py -k dq_in_dkv > $OUT/r/tests_dq.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests_dq.log
date -u >> $OUT/r/start.txt
timeout 230 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dQ in dK/dV)' --dense ours,ours-dq,cudnn --reps 3 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 70 python bench/kernel_resources.py --seq 4096 > $OUT/r/resources.log 2>&1
echo "resources rc=$?" >> $OUT/r/resources.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

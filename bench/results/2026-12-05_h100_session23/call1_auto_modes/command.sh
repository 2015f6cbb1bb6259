#!/bin/bash
# Session 23, call 1 (tree at the commit in commit.txt beside this script). (1) The GPU test of
# the default dK/dV list splits against dense. (2) The gathered dK/dV/dQ kernel alone on NSA's
# 64k tiles in each of its modes (bench/gathered_modes_gpu.py): which of its traffic costs.
# (3) NSA's step at 64k with the library's default (lists split where few CTAs hold long ones)
# against whole lists (the library before session 22), beside our dense causal and cuDNN.
set -x
D=bench/results/2026-12-05_h100_session23/call1_auto_modes
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 100 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py -k long_lists_split > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
timeout 150 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dK/dV lists whole)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

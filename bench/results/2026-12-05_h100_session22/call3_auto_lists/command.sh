#!/bin/bash
# Session 22, call 3 (tree at the commit in commit.txt beside this script). Call 2 (H100): NSA's
# compressed branch fwd+bwd at 64k 9.36 ms with whole dK/dV lists, 8.27 in 4; the window slower
# split. The dK/dV kernel now splits long lists where few CTAs hold them (dkv_list_splits=None:
# the compressed branch in 4 at 64k, in 2 at 32k; the window and dense causal whole). (1) NSA's
# step at 64k, the library (auto) against whole lists (the library before), beside our dense
# causal and cuDNN. (Trimmed to this for the device time left: about 5 minutes.)
set -x
D=bench/results/2026-12-05_h100_session22/call3_auto_lists
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 220 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dK/dV lists whole)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

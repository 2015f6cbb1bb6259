#!/bin/bash
# Session 16, call 6 (tree at the commit in commit.txt beside this script). The final commit's
# default (Config(gpu_gathered_dq=None): gathered dQ from 64k query tokens): NSA's
# forward+backward at 64k and 16k against our dense causal, to check the length rule runs as
# measured in calls 4 and 5 (under 270 s of device time left: no cuDNN rows).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session16/call6_final_default/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/nsa --sizes 65536,16384 --methods 'NSA train' --nsa-variants NSA --dense ours --reps 5 > $OUT/r/nsa.log 2>&1
echo "llm rc=$?" >> $OUT/r/nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 15, call 6 (tree at the commit in commit.txt beside this script). The dK/dV's one CTA per
# query head (split=true) against one per kv head (split=false), forward+backward, for dense causal
# attention, NSA's compressed keys and a 512-key sliding window at 16k and 64k: what the new
# default (split below 256 CTAs per kv head) chooses, side by side with the other form.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session15/call6_split_heads/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/dkv_split_gpu.py $OUT/r/split --option heads --sizes 16384,65536 --reps 3 > $OUT/r/split.log 2>&1
echo "split rc=$?" >> $OUT/r/split.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

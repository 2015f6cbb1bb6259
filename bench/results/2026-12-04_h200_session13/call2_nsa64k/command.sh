#!/bin/bash
# Session 13, call 2 (tree at the commit in commit.txt beside this script). The importance
# kernel on by default: NSA's selected branch at 64k with it and with the eight attention calls,
# then the profiles of NSA's step and of its forward selection with the kernel.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session13/call2_nsa64k/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 260 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA-selected' --skip 'routed,bq64' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm64k.log
timeout 150 python bench/profile_llm.py $OUT/r/prof_nsa --what nsa --seq 65536 > $OUT/r/prof_nsa.log 2>&1
echo "prof rc=$?" >> $OUT/r/prof_nsa.log
timeout 100 python bench/profile_llm.py $OUT/r/prof_sel --what select:NSA-selected --seq 65536 > $OUT/r/prof_sel.log 2>&1
echo "prof rc=$?" >> $OUT/r/prof_sel.log
date -u > $OUT/r/end.txt
rm -rf $OUT/r/prof_nsa/trace $OUT/r/prof_sel/trace
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

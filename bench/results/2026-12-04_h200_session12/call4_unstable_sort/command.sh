#!/bin/bash
# Session 12, call 4 (tree at the commit in commit.txt beside this script). Value sorts without
# stability (topk.sort_values: XLA:GPU sorts (value, iota) pairs for a stable sort): the Seer
# gate, BlockTopK and NSA's selected branch at 64k against our dense causal; the Seer gate's
# selection profiled again.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session12/call4_unstable_sort/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'Seer-gate,MInference-BlockTopK,NSA-selected' --skip 'routed,bq64' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
date -u >> $OUT/r/start.txt
timeout 80 python bench/profile_llm.py $OUT/r/prof_seer --what 'select:Seer-gate(nz=0.1)' --hlo > $OUT/r/prof_seer.log 2>&1
date -u > $OUT/r/end.txt
rm -rf $OUT/r/*/trace
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

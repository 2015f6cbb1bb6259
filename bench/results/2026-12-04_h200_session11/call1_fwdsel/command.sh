#!/bin/bash
# Session 11, call 1 (tree at this script's commit, sent as a working tree; no git commands on the
# device copy). The selection a forward call computes (select_fwd: no backward-only key-block-major
# lists; the Seer rows now build their tile lists in the selection, as BlockTopK's do): where it
# goes for BlockTopK and the Seer gate, and their 64k rows; then the 128k rows not yet measured on
# the H200 (Seer gate, MoBA(4096,12), NSA's selected branch).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session11/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 70 python bench/profile_llm.py $OUT/r/prof_blocktopk --what select:MInference-BlockTopK --seq 65536 > $OUT/r/prof_blocktopk.log 2>&1
timeout 70 python bench/profile_llm.py $OUT/r/prof_seer --what select:Seer-gate --seq 65536 > $OUT/r/prof_seer.log 2>&1
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'MInference-BlockTopK,Seer-gate' --dense ours --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/mid.txt
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/llm128k --sizes 131072 --methods 'Seer-gate,MoBA(4096,12),NSA-selected' --skip 'routed,bq64,XLA gate' --dense ours --reps 3 > $OUT/r/llm128k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r  # traces stay behind (too large to come back)

#!/bin/bash
# Session 10, call 1 (tree at this script's commit, sent as a working tree; no git commands on the
# device copy). At 64k the selections changed in session 9 and never measured with the final
# code (NSA's token-major importance, the one-hot mask up to k=16, the k-th value above it:
# NSA, BlockTopK, Seer gate, vertical-slash) and NSA's forward+backward; where BlockTopK's
# selection time goes; vertical-slash and PSA at 128k, not yet measured on the kernels.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session10/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 60 python bench/profile_llm.py $OUT/r/prof_blocktopk --what select:MInference-BlockTopK --seq 65536 > $OUT/r/prof_blocktopk.log 2>&1
timeout 270 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA train,NSA-selected,MInference-BlockTopK,MInference-VerticalSlash,Seer-gate' --skip 'routed,bq64,XLA gate' --nsa-variants NSA --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/mid.txt
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm128k --sizes 131072 --methods 'MInference-VerticalSlash,PSA' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm128k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r  # traces stay behind (too large to come back)

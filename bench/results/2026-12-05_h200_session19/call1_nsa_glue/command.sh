#!/bin/bash
# Session 19, call 1 (tree at the commit in commit.txt beside this script). Session 17's sort-free
# candidates for NSA's XLA glue, first on their own (top-k masks; the gathered tiles' pairs at 64k),
# then in NSA's whole forward+backward at 64k, one row per glue, beside the library's glue, our dense
# causal kernel and cuDNN in the same process; then the profile of the combined candidate's step.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h200_session19/call1_nsa_glue/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 80 python bench/topk_gpu.py > $OUT/r/topk.jsonl 2> $OUT/r/topk.log
echo "topk rc=$?" >> $OUT/r/topk.log
timeout 90 python bench/gathered_tiles_gpu.py --sizes 65536 > $OUT/r/tiles.jsonl 2> $OUT/r/tiles.log
echo "tiles rc=$?" >> $OUT/r/tiles.log
date -u >> $OUT/r/start.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 --nsa-glue 'library,value sorts,mask scatter,pair words,pair ranks,value sorts+pair words' > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 90 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa --nsa-glue 'value sorts+pair words' > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

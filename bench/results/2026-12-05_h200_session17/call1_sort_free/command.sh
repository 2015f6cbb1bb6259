#!/bin/bash
# Session 17, call 1 (tree at the commit in commit.txt beside this script). Two sort-free XLA steps
# in NSA's step: the gathered tiles' (block, token) pairs from population counts (no sort), and
# topk_mask's top-16 of 1,024 from two value sorts (no top_k, no one-hot). GPU tests of the NSA
# paths; both microbenchmarks; NSA's forward+backward at 64k against our dense kernel and cuDNN;
# NSA's selected branch (selection overhead) at 64k; the 64k step's profile.
set -x
C=bench/results/2026-12-05_h200_session17/call1_sort_free
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $C/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 170 python -m pytest -q -m gpu tests/test_gathered.py tests/test_packed.py tests/test_routed.py tests/test_nsa_importance.py -k "gathered_dkv_on_the_gpu or nsa_like_selection_on_the_gpu or nsa_kernels_on_the_gpu or nsa_select_through_the_kernel" > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 60 python bench/topk_gpu.py > $OUT/r/topk.jsonl 2> $OUT/r/topk.log
echo "topk rc=$?" >> $OUT/r/topk.log
timeout 60 python bench/gathered_tiles_gpu.py --sizes 65536 > $OUT/r/tiles.jsonl 2> $OUT/r/tiles.log
echo "tiles rc=$?" >> $OUT/r/tiles.log
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
timeout 80 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
timeout 90 python bench/llm_sparse_gpu.py $OUT/r/sel --sizes 65536 --methods 'NSA-selected' --skip 'routed,bq64,XLA gate,importance by calls' --dense ours --reps 5 > $OUT/r/sel.log 2>&1
echo "sel rc=$?" >> $OUT/r/sel.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

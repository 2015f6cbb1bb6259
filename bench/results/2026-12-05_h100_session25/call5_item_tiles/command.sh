#!/bin/bash
# Session 25, call 5 (tree at the commit in commit.txt beside this script). Call 4: NSA's
# step at 64k took 28.22 ms with at most 32 tiles per gathered work item against 28.54 at
# 256 (the initial block's 128-tile items ran on alone at the end). 32 is now the default
# where the kernel gives dQ (gathered.DQ_ITEM_TILES). (1) The gathered GPU tests against
# the dense f32 oracle. (2) NSA's step at 64k: library (32), 256, 16 and 64 tiles, then
# library and 256 again, beside our dense kernel and cuDNN.
set -x
D=bench/results/2026-12-05_h100_session25/call5_item_tiles
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u >> $OUT/r/start.txt
timeout 330 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,items 256,items 16,items 64,library,items 256' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 23, call 3 (tree at the commit in commit.txt beside this script). Call 2 (H100): the
# gathered kernel with dQ spills ~200 bytes a thread (ptxas) and its dQ adds cost 1.5 ms at 1k
# chunks, 3.1 ms at 4k. The kernel now computes dQ in two halves of its columns
# (backward_dkv_gathered.DQ_HALVES). (1) Its GPU tests against the dense f32 mask. (2) Its modes
# with ptxas's report, halves against one whole-width wgmma ('whole dq'). (3) NSA's step at 64k:
# 4k (library) and 1k chunks, each with halves (library) and whole (glue 'gathered dq whole').
set -x
D=bench/results/2026-12-05_session23/call3_dq_halves
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 120 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
MOSAIC_GPU_DUMP_PTXAS=1 timeout 120 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks whole dq,dq 2k chunks,dq 4k chunks (library),dq 4k chunks whole dq' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 230 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (items by 1k tokens)' --nsa-glue 'library,gathered dq whole' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

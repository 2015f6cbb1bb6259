#!/bin/bash
# Session 24, call 2 (tree at the commit in commit.txt beside this script). Call 1: one CTA a
# SM walking items c, c + 132, ... is 1.7x slower (static round robin over items of 1 to 128
# tiles). Now a CTA walks m consecutive items (backward_dkv_gathered.ITEMS_PER_CTA): the
# hardware still balances CTAs, the empty tail of the static item bound shrinks m-fold, the
# next item's K/V and first tiles load during the current one.
# (1) The kernel alone at 64k: 1k chunks with 1, 2, 4, 8 items a CTA, 4k with 1 and 4, and
#     1k with the empty items cut off (timing only: what the empty CTAs cost).
# (2) NSA's step at 64k: the library against 'gathered 2/4 items a CTA', beside cuDNN.
# (3) The gathered GPU tests against the dense f32 oracle (3 and 4 items a CTA among them).
set -x
D=bench/results/2026-12-05_h100_session24/call2_items_per_cta
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
MOSAIC_GPU_DUMP_PTXAS=1 timeout 170 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks 2 items a CTA,dq 1k chunks 4 items a CTA,dq 1k chunks 8 items a CTA,dq 1k chunks live items only,dq 4k chunks (library),dq 4k chunks 4 items a CTA' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA' --nsa-glue 'library,gathered 2 items a CTA,gathered 4 items a CTA' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 180 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

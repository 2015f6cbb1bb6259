#!/bin/bash
# Session 28, call 1 (tree at the commit in commit.txt beside this script): the list of
# pallas_kernels/gpu/NOTES.md "Session 27", in priority order, each step only if time is left.
# 1. NSA's 64k step: library (session 26's flat row sorts and one-pass first_selected),
#    the old glue, and the one-slot dQ option, beside cuDNN, in one run.
# 2-3. the one-slot dQ oracle test and BlockMask & Causal() on the Mosaic GPU kernels.
# 4-6. gathered tiles' glue, MoBA/VerticalSlash with both glues, NSA profile.
# 7. step 1 again (a second same-run measurement of the 4x target).
set -x
D=bench/results/2026-12-06_h100_session28/call1_new_glue
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
END=$((SECONDS + ${BUDGET:-570}))  # BUDGET: seconds this call may take
left() { [ $((END - SECONDS)) -gt "$1" ]; }
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 220 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA \
    --nsa-glue 'library,row sorts+first by passes,gathered dq 2 stages' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$? at $SECONDS s" >> $OUT/r/llm.log
left 110 && { JAXSPARSE_TEST_WORKERS=0 timeout 110 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test_gathered.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/test_gathered.log; }
left 80 && { JAXSPARSE_TEST_WORKERS=0 timeout 80 python -m pytest -q -m gpu tests/test_gpu_suite.py -k BlockMask > $OUT/r/test_blockmask.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/test_blockmask.log; }
left 60 && { timeout $((END - SECONDS - 5)) python bench/gathered_tiles_gpu.py --sizes 65536 > $OUT/r/gathered_tiles.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/gathered_tiles.log; }
left 120 && { timeout $((END - SECONDS - 5)) python bench/llm_sparse_gpu.py $OUT/r/methods --sizes 65536 --methods 'MoBA,VerticalSlash' \
    --skip 'XLA gate,4096,1 call' --method-glue 'library,row sorts+first by passes' --dense cudnn --reps 5 > $OUT/r/methods.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/methods.log; }
left 90 && { timeout $((END - SECONDS - 5)) python bench/profile_llm.py $OUT/r/prof --what nsa > $OUT/r/prof.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/prof.log; }
left 150 && { timeout $((END - SECONDS - 5)) python bench/llm_sparse_gpu.py $OUT/r/llm2 --sizes 65536 --methods 'NSA train' --nsa-variants NSA \
    --nsa-glue 'library' --dense cudnn --reps 5 > $OUT/r/llm2.log 2>&1; echo "rc=$? at $SECONDS s" >> $OUT/r/llm2.log; }
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

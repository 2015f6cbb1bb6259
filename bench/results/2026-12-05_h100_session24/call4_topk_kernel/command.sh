#!/bin/bash
# Session 24, call 4 (tree at the commit in commit.txt beside this script). NSA's top-16 of
# 1,024 blocks a row (131k rows at 64k) costs about 1.05 ms of the step in XLA (a group-max
# pass and two sorts of [131072, 128], session 22's profile). New: one Pallas Triton kernel
# holding each row in registers (pallas_kernels/gpu/nsa_topk.py, Config(gpu_topk_kernel)).
# (1) The selection alone at 64k: XLA against the kernel with 1, 2, 4 rows a program, bits
#     checked equal to XLA's. (2) NSA's step at 64k with and without it, beside cuDNN.
set -x
D=bench/results/2026-12-05_h100_session24/call4_topk_kernel
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 150 python bench/nsa_topk_gpu.py $OUT/r/topk --seq 65536 > $OUT/r/topk.log 2>&1
echo "topk rc=$?" >> $OUT/r/topk.log
date -u >> $OUT/r/start.txt
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (top-n kernel)' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 14, call 1 (tree at the commit in commit.txt beside this script). The loads alone of
# NSA's selected-branch dK/dV (bench/gathered_loads_gpu.py): packed tiles, the same tiles as 16
# slab copies, and gathered tiles, at 64k (8 and 32 tiles per CTA) and 128k (8 per CTA).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call1_gathered_loads/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 200 python bench/gathered_loads_gpu.py --sizes 65536 --reps 10 > $OUT/r/loads64k.jsonl 2> $OUT/r/loads64k.log
echo "rc=$?" >> $OUT/r/loads64k.log
timeout 120 python bench/gathered_loads_gpu.py --sizes 65536 --reps 10 --tiles-per-cta 32 > $OUT/r/loads64k_32.jsonl 2> $OUT/r/loads64k_32.log
echo "rc=$?" >> $OUT/r/loads64k_32.log
timeout 200 python bench/gathered_loads_gpu.py --sizes 131072 --reps 10 > $OUT/r/loads128k.jsonl 2> $OUT/r/loads128k.log
echo "rc=$?" >> $OUT/r/loads128k.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

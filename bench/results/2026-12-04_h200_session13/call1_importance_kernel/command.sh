#!/bin/bash
# Session 13, call 1 (tree at the commit in commit.txt beside this script). The fused NSA
# importance kernel's first GPU run: its -m gpu tests, its bench against the eight attention
# calls (1 and 2 warpgroups), then NSA's selected branch and NSA's step with and without it at 64k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session13/call1_importance_kernel/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 170 python -m pytest -x -q -m gpu tests/test_nsa_importance.py > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 120 python bench/nsa_importance_gpu.py --sizes 65536,131072 > $OUT/r/importance.jsonl 2> $OUT/r/importance.log
echo "importance rc=$?" >> $OUT/r/importance.log
timeout 250 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'NSA-selected,NSA train' --skip 'routed,bq64' --nsa-variants 'NSA,NSA (fused importance)' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm64k.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

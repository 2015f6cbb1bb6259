#!/bin/bash
# Session 8, call 1 (tree at 1853881, session 7's final code): what session 7 could not measure —
# the routed/packed GPU tests; NSA-selected, the Seer gate and NSA's forward+backward at 64k/128k;
# profiles of the selections still over 15 % (FlexPrefill, BlockTopK, Seer) at 64k.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=1853881
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests/test_routed.py tests/test_packed.py > $OUT/r/gpu_tests.log 2>&1
S='routed,bq64,XLA gate,1 call'
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm64k128k --sizes 65536,131072 --methods 'NSA train,NSA-selected,Seer-gate' --skip "$S" --nsa-variants NSA --reps 3 > $OUT/r/llm64k128k.log 2>&1
for m in FlexPrefill MInference-BlockTopK Seer; do
  timeout 60 python bench/profile_llm.py $OUT/r/prof_$m --what select:$m --seq 65536 > $OUT/r/prof_$m.log 2>&1
done
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

#!/bin/bash
# Session 7, call 2 (tree at c169480): the methods that failed in call 1 (top-k recursion, MoBA's
# gate with more picks than chunks) at 16k and 64k; where the selections of FlexPrefill, Seer,
# BlockTopK and VerticalSlash spend their time at 64k; the gate kernel's GPU tests.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=c169480
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 60 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gate_topk.py > $OUT/r/gpu_tests.log 2>&1
S='routed,bq64,XLA gate,1 call'
timeout 100 python bench/llm_sparse_gpu.py $OUT/r/llm16k --sizes 16384 --methods 'VerticalSlash,BlockTopK,Seer,MoBA(4096' --skip "$S" --reps 3 > $OUT/r/llm16k.log 2>&1
timeout 130 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'VerticalSlash,BlockTopK,Seer' --skip "$S" --reps 3 > $OUT/r/llm64k.log 2>&1
for w in FlexPrefill Seer MInference-BlockTopK MInference-VerticalSlash NSA-selected; do
  timeout 50 python bench/profile_llm.py $OUT/r/prof_$w --what select:$w --seq 65536 > $OUT/r/prof_$w.log 2>&1
  rm -rf $OUT/r/prof_$w/trace
done
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

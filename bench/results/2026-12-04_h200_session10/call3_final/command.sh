#!/bin/bash
# Session 10, call 3 (the session's last device time; tree at this script's commit, sent as a
# working tree; no git commands on the device copy). The k-th value as a radix select against
# the value sort at the three selections' shapes; PSA's GPU tests against the dense oracle,
# whose pooled keys are now whole-array means (one slice per pooled key made a graph XLA did
# not compile in 7 minutes: why no earlier run finished); at 64k BlockTopK, the Seer gate and
# NSA's selected branch with the radix select (NSA and the Seer gate were cut off in call 1).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session10/call3_final/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 50 python bench/kth_value_gpu.py > $OUT/r/kth_value.jsonl 2> $OUT/r/kth_value.log
timeout 190 python -u -m pytest -v -m gpu -p no:cacheprovider --durations=5 tests/test_dynamic_pyramid.py > $OUT/r/gpu_tests.log 2>&1
date -u > $OUT/r/mid.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --dense ours --methods 'MInference-BlockTopK,NSA-selected,Seer-gate' --skip 'routed,bq64,XLA gate' --reps 3 > $OUT/r/llm64k.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

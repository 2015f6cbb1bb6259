#!/bin/bash
# Session 14, call 8 (tree at the commit in commit.txt beside this script). The final code's GPU
# tests after the dK/dV kernels share their step (backward_dkv.tile_grads) and the gathered tiles
# are built in the backward: the gathered and packed paths, and the generic dK/dV kernel's
# window + segments + soft cap + GQA, random-block and determinism tests.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call8_final_tests/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 210 python -m pytest -q -m gpu tests/test_gathered.py tests/test_packed.py tests/test_pallas_gpu_device.py -k "gathered or nsa_like or window_segments or random_block or deterministic" > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

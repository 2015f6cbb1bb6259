#!/bin/bash
# Session 21, call 1 (tree at the commit in commit.txt beside this script). Session 20's two options,
# first run on a GPU: the GPU tests of Config(gpu_dq_in_dkv=True) and of the gathered kernel (token-major
# rows included) against the dense f32 mask; then NSA's forward+backward at 64k with the dK/dV kernel
# giving dQ and with the gathered kernel's token-major rows, beside our dense causal kernel (with and
# without dQ in dK/dV) and cuDNN in one process.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-05_h100_session21/call1_dq_token_major/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 120 python -m pytest -q -m gpu tests/test_pallas_gpu_device.py -k dq_in_dkv > $OUT/r/tests_dq.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests_dq.log
JAXSPARSE_TEST_WORKERS=0 timeout 120 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/tests_gathered.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests_gathered.log
date -u >> $OUT/r/start.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dQ in dK/dV)' --dense ours,ours-dq,cudnn --reps 5 --nsa-glue 'library,token-major rows' > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 22, call 1 (tree at the commit in commit.txt beside this script). Session 21 found NSA's
# 64k step 4x against cuDNN on an H200 but not on an H100 (31.04 ms, ~1.9 ms short); the gathered
# kernel's options were tuned on H200s. (1) A profile of the library's NSA step on this card, with
# the compiled HLO; (2) NSA at 64k with each existing option beside our dense causal and cuDNN;
# (3) ptxas's registers and spills of the dK/dV kernel giving dQ with FA3's 240/24 register split
# (never run before), and NSA with it.
set -x
D=bench/results/2026-12-05_h100_session22/call1_regs240_profile
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 100 python bench/profile_llm.py $OUT/r/profile_nsa --what nsa --hlo > $OUT/r/profile_nsa.log 2>&1
echo "profile rc=$?" >> $OUT/r/profile_nsa.log
date -u >> $OUT/r/start.txt
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dQ kernel),NSA (items by blocks),NSA (items by 2k tokens),NSA (items by 8k tokens),NSA (heavy first),NSA (dK/dV lists in 4),NSA (one dK/dV warpgroup)' --dense ours,cudnn --reps 3 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
timeout 70 python bench/kernel_resources.py --seq 4096 --configs default,dq_in_dkv,dq_in_dkv_regs_240 > $OUT/r/resources.log 2>&1
echo "resources rc=$?" >> $OUT/r/resources.log
date -u >> $OUT/r/start.txt
timeout 70 python bench/llm_sparse_gpu.py $OUT/r/llm_regs --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA (dQ in dK/dV)' --dense ours --reps 3 --nsa-glue 'dq regs 240' > $OUT/r/llm_regs.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm_regs.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

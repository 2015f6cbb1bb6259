#!/bin/bash
# Session 22, call 2 (tree at the commit in commit.txt beside this script). Call 1 (H100): NSA's
# 64k step 30.75 ms; the gathered kernel 8.25 ms a step against 5.90 on the H200 (session 19),
# the rest alike; options swept once: dK/dV lists in 4 30.14, items by 2k tokens 30.37. Here:
# (1) NSA's compressed and window branches alone, fwd+bwd at 64k, dK/dV lists in 1, 2, 4, 8
# (which branch gains); (2) NSA's step at 64k with the library, lists in 4, items by 2k and 1k
# tokens, and 2k with lists in 4, beside our dense causal and cuDNN, 5 reps; (3) the H100/H200
# ratio of the gathered kernel (8.25/5.90 ms) is the HBM bandwidth ratio (1.43): if Nsight Compute
# is on the machine, its DRAM bytes and L2 hit rate for one launch of that kernel.
set -x
D=bench/results/2026-12-05_h100_session22/call2_lists_chunks
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 150 python bench/dkv_split_gpu.py $OUT/r/lists --option lists --sizes 65536 --reps 5 > $OUT/r/lists.log 2>&1
echo "lists rc=$?" >> $OUT/r/lists.log
date -u >> $OUT/r/start.txt
timeout 300 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants 'NSA,NSA (dK/dV lists in 4),NSA (items by 2k tokens),NSA (items by 1k tokens),NSA (items by 2k tokens, dK/dV lists in 4)' --dense ours,cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
(which ncu nsys; ls /usr/local/cuda/bin /opt/nvidia 2>&1 | head -80) > $OUT/r/tools.txt 2>&1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  timeout 150 $NCU --kernel-name regex:dkv_gathered --launch-count 1 --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_red.sum python bench/profile_llm.py $OUT/r/ncu_profile --what nsa > $OUT/r/ncu.log 2>&1
  echo "ncu rc=$?" >> $OUT/r/ncu.log
fi
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 25, call 1 (tree at the commit in commit.txt beside this script). The gathered
# dK/dV/dQ kernel's two consumer warpgroups take alternate tiles; with two Q/dO slots in
# all, each warpgroup had one, so its next tile could only load after it finished this one.
# Now it has two (DQ_STAGES = 4), and a slot's dQ staging tile is that slot's own bytes.
# (1) The gathered GPU tests against the dense f32 oracle. (2) The kernel alone at 64k:
#     two slots a warpgroup (library) against one (mode 'one slot a warpgroup', the new
#     code with DQ_STAGES = 2) at 1k and 4k chunks; then the kernel before this session
#     (old_backward_dkv_gathered.py, from 4c1dae9, in a copy of the tree). (3) NSA's step
#     at 64k: library against glue 'gathered dq 2 stages', beside cuDNN; then the old tree's.
set -x
D=bench/results/2026-12-05_h100_session25/call1_two_slots
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 170 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u >> $OUT/r/start.txt
timeout 100 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks one slot a warpgroup,dq 4k chunks (library),dq 4k chunks one slot a warpgroup' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u >> $OUT/r/start.txt
rm -rf /tmp/old && mkdir /tmp/old && cp -r bench jaxsparse pallas_kernels tests /tmp/old/ && cp $D/old_backward_dkv_gathered.py /tmp/old/pallas_kernels/gpu/backward_dkv_gathered.py
(cd /tmp/old && PYTHONPATH=. timeout 60 python bench/gathered_modes_gpu.py $OUT/r/modes_old --seq 65536 --modes 'dq 1k chunks' > $OUT/r/modes_old.log 2>&1; echo "modes_old rc=$?" >> $OUT/r/modes_old.log)
date -u >> $OUT/r/start.txt
timeout 200 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods 'NSA train' --nsa-variants NSA --nsa-glue 'library,gathered dq 2 stages' --dense cudnn --reps 5 > $OUT/r/llm.log 2>&1
echo "llm rc=$?" >> $OUT/r/llm.log
date -u >> $OUT/r/start.txt
(cd /tmp/old && PYTHONPATH=. timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm_old --sizes 65536 --methods 'NSA train' --nsa-variants NSA --dense cudnn --reps 5 > $OUT/r/llm_old.log 2>&1; echo "llm_old rc=$?" >> $OUT/r/llm_old.log)
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

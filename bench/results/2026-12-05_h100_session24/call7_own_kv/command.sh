#!/bin/bash
# Session 24, call 7 (tree at the commit in commit.txt beside this script; the last device
# minutes). Where does a CTA walking several items stall (call 2: 2 items a CTA 9.60 against
# 8.35 ms)? The walking form (commit 605f28d) with each warpgroup loading its own K/V copy
# per item, as one item a CTA does (backward_dkv_gathered.SHARED_KV = False), against the
# shared two-slot K/V of call 2. The gathered kernel alone at 64k, 1k chunks.
set -x
D=bench/results/2026-12-05_h100_session24/call7_own_kv
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
timeout 170 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks 2 items a CTA,dq 1k chunks 2 items a CTA own K/V,dq 1k chunks 4 items a CTA own K/V' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

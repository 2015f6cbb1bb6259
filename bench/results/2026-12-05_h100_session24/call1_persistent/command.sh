#!/bin/bash
# Session 24, call 1 (tree at the commit in commit.txt beside this script). The gathered
# kernel's two switches written in session 23 and never run on a GPU: PERSISTENT (one CTA a SM
# walking the items) and KEY_POS_BY_ROW (the mask's key positions one value a tile row).
# (1) The gathered GPU tests against the dense f32 oracle; case 4 turns both on.
# (2) The kernel alone on NSA's 64k tiles in those modes, with ptxas's report.
set -x
D=bench/results/2026-12-05_h100_session24/call1_persistent
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat $D/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi > $OUT/r/nvidia-smi.txt 2>&1
JAXSPARSE_TEST_WORKERS=0 timeout 270 python -m pytest -q -m gpu tests/test_gathered.py -k on_the_gpu > $OUT/r/test.log 2>&1
echo "test rc=$?" >> $OUT/r/test.log
date -u >> $OUT/r/start.txt
MOSAIC_GPU_DUMP_PTXAS=1 timeout 240 python bench/gathered_modes_gpu.py $OUT/r/modes --seq 65536 --modes 'dq 1k chunks,dq 1k chunks persistent,dq 1k chunks key rows,dq 1k chunks persistent key rows,dq 4k chunks (library),dq 4k chunks persistent' > $OUT/r/modes.log 2>&1
echo "modes rc=$?" >> $OUT/r/modes.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

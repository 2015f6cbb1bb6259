#!/bin/bash
# Session 4, call 4: NSA with the two-level top-k; routed/NSA GPU tests; ncu of the 3-D NA forward.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python -m pytest -q -m gpu tests/test_routed.py tests/test_nsa.py > $OUT/r/gpu_tests.log 2>&1
timeout 120 python bench/profile_llm.py $OUT/r/prof_nsa64k --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof_nsa64k/trace
timeout 150 ncu --clock-control none --set full -k "regex:^anonymous_mosaic" -s 1 -c 1 -o $OUT/r/na3d_fwd python bench/vision_once.py --case na3d --mode fwd --calls 2 > $OUT/r/ncu_full.log 2>&1
ncu --import $OUT/r/na3d_fwd.ncu-rep --page details > $OUT/r/ncu_details.txt 2>&1
ncu --import $OUT/r/na3d_fwd.ncu-rep --page source --csv > $OUT/r/ncu_source.csv 2>/dev/null
rm -f $OUT/r/na3d_fwd.ncu-rep
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

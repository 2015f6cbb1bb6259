#!/bin/bash
# Session 4, call 2: NA after shift/truncating division in the grid rules; NSA with
# attention-computed importance (first GPU run), and where NSA's time goes.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/vision_gpu.py $OUT/r/vision --variants pattern_tiled > $OUT/r/vision.log 2>&1
timeout 120 ncu --clock-control none --set full -k "regex:^anonymous_mosaic" -s 1 -c 1 -o $OUT/r/na2d_fwd python bench/vision_once.py --case na2d --mode fwd --calls 2 > $OUT/r/ncu_full.log 2>&1
ncu --import $OUT/r/na2d_fwd.ncu-rep --page details > $OUT/r/ncu_details.txt 2>&1
ncu --import $OUT/r/na2d_fwd.ncu-rep --page source --csv > $OUT/r/ncu_source.csv 2>/dev/null
rm -f $OUT/r/na2d_fwd.ncu-rep
timeout 150 python bench/profile_llm.py $OUT/r/prof_nsa64k --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof_nsa64k/trace
timeout 240 python bench/llm_sparse_gpu.py $OUT/r/llm --sizes 65536 --methods NSA --reps 3 > $OUT/r/llm.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

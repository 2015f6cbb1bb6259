#!/bin/bash
# Session 4, call 10: grid masks combine the innermost axis first; NA pattern_tiled both cases + 3-D ncu counts.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/vision_gpu.py $OUT/r/vision --variants pattern_tiled > $OUT/r/vision.log 2>&1
timeout 100 ncu --clock-control none --section InstructionStats --section LaunchStats --section SpeedOfLight -k "regex:^anonymous_mosaic" -s 1 -c 1 python bench/vision_once.py --case na3d --mode fwd --calls 2 > $OUT/r/ncu_na3d.txt 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

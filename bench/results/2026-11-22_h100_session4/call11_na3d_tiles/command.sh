#!/bin/bash
# Session 4, call 11: 3-D NA forward with other box shapes (same grid/window), back-to-back timing.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
for tile in 16,2,4 8,4,4 4,4,8 2,8,8 1,8,16; do
  timeout 60 python bench/vision_once.py --case na3d --mode fwd --calls 5 --tile $tile 2>&1 | grep median >> $OUT/r/tiles.log
done
timeout 60 python bench/vision_once.py --case na3d --mode fwd --calls 5 --dense 2>&1 | grep median >> $OUT/r/tiles.log
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

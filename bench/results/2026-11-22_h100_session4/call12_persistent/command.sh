#!/bin/bash
# Session 4, call 12: NA forward, persistent vs one CTA per tile (Config.gpu_persistent).
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
for c in na3d na2d; do for p in auto yes no; do
  timeout 60 python bench/vision_once.py --case $c --mode fwd --calls 5 --persistent $p 2>&1 | grep median >> $OUT/r/persistent.log
done; done
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

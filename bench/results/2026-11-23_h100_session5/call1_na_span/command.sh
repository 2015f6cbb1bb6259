#!/bin/bash
# Session 5, call 1: Neighborhood masks as one unsigned range test per axis;
# GPU tests of the grid patterns and the vision modules; NA timings (dense, pattern, pattern_tiled).
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt 2>&1
timeout 200 python -m pytest -q -m gpu tests/test_gpu_suite.py -k "Neighborhood or Window" > $OUT/r/gpu_tests.log 2>&1
timeout 120 python -m pytest -q tests/test_nn_vision.py -k "neighborhood" > $OUT/r/nn_vision.log 2>&1
timeout 240 python bench/vision_gpu.py $OUT/r/vision --variants dense,pattern,pattern_tiled > $OUT/r/vision.log 2>&1
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r
# Ran the working tree at 38a40e2 (the device's .git said 0742c8b, which the JSON's commit field shows).

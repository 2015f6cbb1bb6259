#!/bin/bash
# Session 11, call 5 (tree at the commit in commit.txt beside this script). The k-th value in two
# levels with narrower groups (4, 2 entries) against the library's masks at BlockTopK's and the
# Seer gate's 64k shapes.
export PYTHONPATH=.
mkdir -p $OUT/r
timeout 200 python bench/kth_value_gpu.py --cases blocktopk,seer --reps 5 > $OUT/r/kth_value.jsonl 2> $OUT/r/kth_value.log
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

#!/bin/bash
# Session 12, call 5 (tree at the commit in commit.txt beside this script). Top-k masks alone
# with unstable value sorts: the library's path against the one-hot, a scatter of the same
# indices, and the two-level k-th value (groups of 4 or 2), for NSA, the Seer gate and BlockTopK.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/kth_value_gpu.py --cases nsa,seer,blocktopk --reps 5 > $OUT/r/kth.jsonl 2> $OUT/r/kth.err
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

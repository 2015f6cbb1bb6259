#!/bin/bash
# Session 14, call 3 (tree at the commit in commit.txt beside this script). The gathered dK/dV
# on by default: GPU tests; the tile build's cost and top_k against 32-bit words for each row's
# blocks (bench/gathered_tiles_gpu.py).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session14/call3_tiles/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
JAXSPARSE_TEST_WORKERS=0 timeout 150 python -m pytest -q -m gpu tests/test_gathered.py tests/test_packed.py > $OUT/r/tests.log 2>&1
echo "tests rc=$?" >> $OUT/r/tests.log
timeout 100 python bench/gathered_tiles_gpu.py --sizes 65536,131072 > $OUT/r/tiles.jsonl 2> $OUT/r/tiles.log
echo "tiles rc=$?" >> $OUT/r/tiles.log
date -u > $OUT/r/end.txt
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

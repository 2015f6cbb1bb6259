#!/bin/bash
# Session 6, call 8: where NSA's forward+backward at 64k goes with the final code.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat .commit 2>/dev/null)
mkdir -p $OUT/r
timeout 200 python bench/profile_llm.py $OUT/r/prof --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof/trace
cd $OUT && tar czf r.tgz r && rm -rf r

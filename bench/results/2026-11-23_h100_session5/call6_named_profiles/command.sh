#!/bin/bash
# Session 5, call 6 (tree at 713eaa0): device profiles of NSA fwd+bwd and MoBA fwd at 64k
# with the kernels named by kind and tile shape (where NSA's 69 ms go, for the next step).
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=713eaa0
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 200 python bench/profile_llm.py $OUT/r/prof_nsa64k --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
timeout 120 python bench/profile_llm.py $OUT/r/prof_moba64k --what moba --seq 65536 > $OUT/r/prof_moba64k.log 2>&1
rm -rf $OUT/r/prof_*/trace
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

#!/bin/bash
# Session 4, call 6: the full issue-5 table (all variants); NSA 64k profile with the optimized HLO dumped.
set -x
export PYTHONPATH=.
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 330 python bench/vision_gpu.py $OUT/r/vision > $OUT/r/vision.log 2>&1
XLA_FLAGS="--xla_dump_to=$OUT/r/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*loss.*" timeout 120 python bench/profile_llm.py $OUT/r/prof_nsa64k --what nsa --seq 65536 > $OUT/r/prof_nsa64k.log 2>&1
rm -rf $OUT/r/prof_nsa64k/trace
mkdir -p $OUT/r/hlo_opt && cp $OUT/r/hlo/*after_optimizations.txt $OUT/r/hlo_opt/ 2>/dev/null; rm -rf $OUT/r/hlo
date -u > $OUT/r/end.txt
cd $OUT && tar czf r.tgz r && rm -rf r

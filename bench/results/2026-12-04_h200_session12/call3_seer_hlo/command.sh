#!/bin/bash
# Session 12, call 3 (tree at the commit in commit.txt beside this script). The Seer gate's
# selection at 64k in stages (gate logits, block mask, with lists) and its compiled HLO with the
# profile's top operations, to read what each large fusion holds; the same for NSA's selection.
set -x
export PYTHONPATH=. JAXSPARSE_COMMIT=$(cat bench/results/2026-12-04_h200_session12/call3_seer_hlo/commit.txt 2>/dev/null)
mkdir -p $OUT/r
date -u > $OUT/r/start.txt
timeout 150 python bench/llm_sparse_gpu.py $OUT/r/llm64k --sizes 65536 --methods 'Seer-gate' --dense ours --reps 5 > $OUT/r/llm64k.log 2>&1
date -u >> $OUT/r/start.txt
timeout 80 python bench/profile_llm.py $OUT/r/prof_seer --what 'select:Seer-gate(nz=0.1)' --hlo > $OUT/r/prof_seer.log 2>&1
date -u >> $OUT/r/start.txt
timeout 80 python bench/profile_llm.py $OUT/r/prof_nsa_sel --what 'select:NSA-selected' --hlo > $OUT/r/prof_nsa_sel.log 2>&1
date -u > $OUT/r/end.txt
rm -rf $OUT/r/*/trace
cd $OUT && find r -type f -size -3M | tar czf r.tgz -T - && rm -rf r

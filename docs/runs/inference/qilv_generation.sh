#!/bin/bash
# A 七律 as `poetgen sample` writes it (best-of 16, line-keep 4), generation alone
# (--generation-only), side by side: base = worktree of 23e8895 at fp32 (its default), new = the
# commit under test at auto (its default); alternating, twice; one thread pinned to core 0.
out=/tmp/runs/side3.jsonl; : > $out
cp /tmp/new/bench/quality_bench.py /tmp/base/bench/quality_bench_new.py
for round in 1 2; do
  for what in plain constrained; do
    extra=""; [ $what = constrained ] && extra="--acrostic 春江花月夜山风雨 --no-repeat"
    for cfg in base:fp32 new:auto base:bf16 new:fp32; do
      who=${cfg%%:*}; prec=${cfg##*:}; s=bench/quality_bench.py; [ $who = base ] && s=bench/quality_bench_new.py
      r=$(cd /tmp/$who && OMP_NUM_THREADS=1 taskset -c 0 python $s time --form 七律 $extra --repeats 7 --threads 1 --precision $prec --generation-only 2>&1 | tail -1)
      echo "{\"who\": \"$who\", \"precision\": \"$prec\", \"round\": $round, \"what\": \"$what\", \"result\": $r}" >> $out
    done
  done
done
echo '"done"' >> $out

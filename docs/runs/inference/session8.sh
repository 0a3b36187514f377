#!/bin/bash
# Session 8, side by side, alternating, twice, one thread pinned to core 0. Worktrees:
#   base  = 23e8895 (before the CPU inference work; sample's default then: fp32)
#   start = 6059edf (this session's start; default auto)
#   new   = the commit under test (default auto; fp32 too: a CPU without native bfloat16)
# Every version runs the new commit's bench scripts (copied in as *_new.py).
out=${1:-/tmp/runs/session8.jsonl}; : > $out
for who in base start; do
  cp /tmp/new/bench/sample_bench.py /tmp/$who/bench/sample_bench_new.py
  cp /tmp/new/bench/quality_bench.py /tmp/$who/bench/quality_bench_new.py
done
cp /tmp/new/bench/sample_bench.py /tmp/new/bench/sample_bench_new.py
cp /tmp/new/bench/quality_bench.py /tmp/new/bench/quality_bench_new.py
for round in 1 2; do
  for cfg in base:fp32 start:auto new:auto new:fp32; do
    who=${cfg%%:*}; prec=${cfg##*:}
    r=$(cd /tmp/$who && OMP_NUM_THREADS=1 taskset -c 0 python bench/sample_bench_new.py poetgen/data/tang.safetensors $prec 2>&1 | tail -1)
    echo "{\"who\": \"$who\", \"round\": $round, \"bench\": \"sample\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    for what in plain constrained; do
      extra=""; [ $what = constrained ] && extra="--acrostic 春江花月夜山风雨 --no-repeat"
      r=$(cd /tmp/$who && OMP_NUM_THREADS=1 taskset -c 0 python bench/quality_bench_new.py time --form 七律 $extra --repeats 7 --threads 1 --precision $prec --generation-only 2>&1 | tail -1)
      echo "{\"who\": \"$who\", \"round\": $round, \"bench\": \"qilv_$what\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    done
  done
done
echo '"done"' >> $out

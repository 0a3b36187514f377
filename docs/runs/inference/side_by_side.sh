#!/bin/bash
# Side by side, alternating, one thread pinned to core 0:
#   base = worktree of 23e8895 (the code before this session; sample's default fp32, its best bf16)
#   new  = worktree of the commit under test (default auto; fp32 for reference)
out=/tmp/runs/side2.jsonl; : > $out
for round in 1 2; do
  for cfg in base:fp32 base:bf16 new:auto new:fp32; do
    who=${cfg%%:*}; prec=${cfg##*:}; dir=/tmp/$who
    r=$(cd $dir && OMP_NUM_THREADS=1 taskset -c 0 python bench/sample_bench.py poetgen/data/tang.safetensors $prec 2>&1 | tail -1)
    echo "{\"who\": \"$who\", \"round\": $round, \"bench\": \"sample\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    r=$(cd $dir && OMP_NUM_THREADS=1 taskset -c 0 python bench/quality_bench.py time --form 七律 --repeats 7 --threads 1 --precision $prec 2>&1 | tail -1)
    echo "{\"who\": \"$who\", \"round\": $round, \"bench\": \"qilv_default\", \"precision\": \"$prec\", \"result\": $r}" >> $out
  done
done
echo '"done"' >> $out

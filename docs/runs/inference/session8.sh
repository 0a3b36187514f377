#!/bin/bash
# Session 8, side by side, alternating, twice, one thread pinned to core 0. Worktrees:
#   base  = 23e8895 (before the CPU inference work; sample's default then: fp32; 814e991, where
#           issue 16 was filed, measured the same: 735 chars/s, 0.102 s, 0.280 s)
#   start = 6059edf (this session's start; default auto)
#   new   = the commit under test (default auto; fp32 too)
# Every version runs the new commit's bench scripts (copied in as *_new.py).
# The avx2 rows stand in for a CPU without AVX-512 or native bfloat16: PyTorch's AVX2 kernels
# (ATEN_CPU_CAPABILITY), oneDNN's and MKL's capped at AVX2, and native_bf16() false.
out=${1:-/tmp/runs/session8.jsonl}; : > $out
for who in base start new; do
  cp /tmp/new/bench/sample_bench.py /tmp/$who/bench/sample_bench_new.py
  cp /tmp/new/bench/quality_bench.py /tmp/$who/bench/quality_bench_new.py
done
no_bf16="import poetgen.lm.inference as i; i.native_bf16 = lambda: False"
for round in 1 2; do
  for cfg in base:fp32 start:auto new:auto new:fp32 base:fp32:avx2 new:auto:avx2; do
    IFS=: read who prec isa <<< "$cfg"
    env=""; pre="pass"
    if [ "$isa" = avx2 ]; then
      env="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
      [ $who = new ] && pre="$no_bf16"
    fi
    run() {  # run a bench script with the arguments given, after $pre
      (cd /tmp/$who && env $env OMP_NUM_THREADS=1 taskset -c 0 python -c "
import runpy, sys; $pre
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@" 2>&1 | tail -1)
    }
    r=$(run bench/sample_bench_new.py poetgen/data/tang.safetensors $prec)
    echo "{\"who\": \"$who\", \"isa\": \"${isa:-native}\", \"round\": $round, \"bench\": \"sample\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    for what in plain constrained; do
      [ "$isa" = avx2 ] && [ $what = plain ] && continue
      extra=""; [ $what = constrained ] && extra="--acrostic 春江花月夜山风雨 --no-repeat"
      r=$(run bench/quality_bench_new.py time --form 七律 $extra --repeats 7 --threads 1 --precision $prec --generation-only)
      echo "{\"who\": \"$who\", \"isa\": \"${isa:-native}\", \"round\": $round, \"bench\": \"qilv_$what\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    done
  done
done
echo '"done"' >> $out

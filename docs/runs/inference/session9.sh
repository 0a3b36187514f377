#!/bin/bash
# Session 9, side by side, alternating, twice, one thread pinned to core 0, all standing in for
# an x86 CPU without AVX-512 or native bfloat16: PyTorch's AVX2 kernels (ATEN_CPU_CAPABILITY),
# oneDNN, MKL and FBGEMM capped at AVX2, native_bf16() false. Worktrees:
#   base  = 23e8895 (before the CPU inference work; sample's default then: fp32)
#   start = 12f01d4 (this session's start; auto: int8 up to 4 rows, float32 above)
#   new   = the commit under test (auto: int8 up to 4 rows, w8a8 above)
# Every version runs the new commit's bench scripts (copied in as *_new.py).
out=${1:-/tmp/runs/session9.jsonl}; : > $out
for who in base start new; do
  cp /tmp/new/bench/sample_bench.py /tmp/$who/bench/sample_bench_new.py
  cp /tmp/new/bench/quality_bench.py /tmp/$who/bench/quality_bench_new.py
done
no_bf16="import poetgen.lm.inference as i; i.native_bf16 = lambda: False"
env="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2"
for round in 1 2; do
  for cfg in base:fp32 start:auto new:auto; do
    IFS=: read who prec <<< "$cfg"
    pre="pass"; [ $who != base ] && pre="$no_bf16"
    run() {  # run a bench script with the arguments given, after $pre
      (cd /tmp/$who && env $env OMP_NUM_THREADS=1 taskset -c 0 python -c "
import runpy, sys; $pre
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@" 2>&1 | tail -1)
    }
    r=$(run bench/sample_bench_new.py poetgen/data/tang.safetensors $prec)
    echo "{\"who\": \"$who\", \"isa\": \"avx2\", \"round\": $round, \"bench\": \"sample\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    for what in plain constrained; do
      extra=""; [ $what = constrained ] && extra="--acrostic 春江花月夜山风雨 --no-repeat"
      r=$(run bench/quality_bench_new.py time --form 七律 $extra --repeats 7 --threads 1 --precision $prec --generation-only)
      echo "{\"who\": \"$who\", \"isa\": \"avx2\", \"round\": $round, \"bench\": \"qilv_$what\", \"precision\": \"$prec\", \"result\": $r}" >> $out
    done
  done
done
echo '"done"' >> $out

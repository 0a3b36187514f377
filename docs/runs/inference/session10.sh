#!/bin/bash
# Session 10: what bounds a batch of 64 on an x86 CPU without AVX-512 or native bfloat16 (the
# same stand-in as session9.sh: PyTorch's AVX2 kernels, oneDNN, MKL and FBGEMM capped at AVX2,
# native_bf16() false), one thread pinned to core 0, twice, alternating:
#   base = 23e8895 at fp32 (bench/sample_bench.py, this commit's copy): the batch of 64 before
#   new  = the commit under test (bench/batch_anatomy.py): real, the projection's and softmax's
#          products free, every product free
out=${1:-/tmp/runs/session10.jsonl}; : > $out
cp /tmp/new10/bench/sample_bench.py /tmp/base10/bench/sample_bench_new.py
no_bf16="import poetgen.lm.inference as i; i.native_bf16 = lambda: False"
env="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2"
run() {  # run a bench script in worktree $1 with the arguments after it, after $pre
  local who=$1; shift
  (cd /tmp/$who && env $env OMP_NUM_THREADS=1 taskset -c 0 python -c "
import runpy, sys; $pre
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@" 2>&1 | tail -1)
}
for round in 1 2; do
  pre="pass"; r=$(run base10 bench/sample_bench_new.py poetgen/data/tang.safetensors fp32)
  echo "{\"who\": \"base\", \"round\": $round, \"result\": $r}" >> $out
  pre="$no_bf16"; r=$(run new10 bench/batch_anatomy.py poetgen/data/tang.safetensors --rows 64)
  echo "{\"who\": \"new\", \"round\": $round, \"result\": $r}" >> $out
done
echo '"done"' >> $out

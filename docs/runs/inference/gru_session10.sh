# GRU model sampling: before (525ac29, nn.GRU in float32) against the GRU copies, alternating, twice, one thread pinned
for round in 1 2; do
  for who in s10wt gru10; do
    r=$(cd /tmp/$who && OMP_NUM_THREADS=1 taskset -c 0 python bench/sample_bench.py /tmp/gru_model.safetensors auto 2>&1 | tail -1)
    echo "{\"who\": \"$who\", \"round\": $round, \"result\": $r}"
  done
done

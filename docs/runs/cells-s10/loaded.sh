cd /tmp/s10wt
for i in 1 2 3 4 5 6; do taskset -c 0 python -c "while True: pass" & done
taskset -c 0 python bench/anchor_bench.py --budget 600 --threads 1 --parallel --versus "--attention 64" --label "loaded: 6 busy loops on its core; LSTM default vs --attention 64" --out /tmp/s10/loaded/attn > /tmp/s10/loaded/attn.json 2> /tmp/s10/loaded/attn.err
kill $(jobs -p) 2>/dev/null
echo done > /tmp/s10/loaded/DONE

# Item 1 again with lr auto: 2 threads one after the other, then 1 thread pinned to core 0
# (one after the other) beside a 45-minute 1-thread run on core 1.
cd /work/main
C=../shared/corpora
python bench/anchor_bench.py --budget 600 --threads 2 --out /tmp/s9/acc/t2 --label "idle, 2 threads, lr auto" > /tmp/s9/acc/t2.json 2> /tmp/s9/acc/t2.err
(OMP_NUM_THREADS=1 taskset -c 1 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --time-budget 45m --threads 1 --out /tmp/s9/acc/t45 > /tmp/s9/acc/t45.log 2>&1; echo done > /tmp/s9/acc/t45.done) &
OMP_NUM_THREADS=1 taskset -c 0 python bench/anchor_bench.py --budget 600 --threads 1 --out /tmp/s9/acc/t1 --label "idle, 1 thread pinned, lr auto" > /tmp/s9/acc/t1.json 2> /tmp/s9/acc/t1.err
wait
echo done > /tmp/s9/acc/DONE

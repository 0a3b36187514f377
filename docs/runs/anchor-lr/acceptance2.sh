# Phase 2 of item 1's acceptance with lr auto, from a frozen worktree: 1 thread pinned to core 0
# (poetgen then the anchor) beside a 45-minute 1-thread poetgen run on core 1.
while kill -0 28303 2>/dev/null; do sleep 5; done
cd /tmp/accwt
C=/work/shared/corpora
(OMP_NUM_THREADS=1 taskset -c 1 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --time-budget 45m --threads 1 --out /tmp/s9/acc/t45 > /tmp/s9/acc/t45.log 2>&1; echo done > /tmp/s9/acc/t45.done) &
OMP_NUM_THREADS=1 taskset -c 0 python bench/anchor_bench.py --budget 600 --threads 1 --out /tmp/s9/acc/t1 --label "idle, 1 thread pinned, lr auto" > /tmp/s9/acc/t1.json 2> /tmp/s9/acc/t1.err
wait
echo done > /tmp/s9/acc/DONE

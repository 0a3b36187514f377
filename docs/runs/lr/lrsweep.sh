cd /work/main
C=../shared/corpora
run() { # core lr steps
  OMP_NUM_THREADS=1 taskset -c $1 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --threads 1 \
    --max-steps $3 --lr $2 --out /tmp/s9/lr/s$3_lr$2 > /tmp/s9/lr/s$3_lr$2.log 2>&1
}
(run 0 0.02 1500; run 0 0.02 800) &
(run 1 0.01 1500; run 1 0.01 800) &
wait
echo done > /tmp/s9/lr/DONE

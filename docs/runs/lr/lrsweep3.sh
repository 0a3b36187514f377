# The low end: 25,000 steps (~45 minutes of one core here), lr 0.01 against 0.005, side by side.
cd /tmp/accwt
C=/work/shared/corpora
run() { # core lr steps
  OMP_NUM_THREADS=1 taskset -c $1 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --threads 1 \
    --max-steps $3 --lr $2 --out /tmp/s9/lr/s$3_lr$2 > /tmp/s9/lr/s$3_lr$2.log 2>&1
}
(run 0 0.01 25000) &
(run 1 0.005 25000) &
wait
echo done > /tmp/s9/lr/DONE3

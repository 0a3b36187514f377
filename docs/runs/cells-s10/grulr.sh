cd /tmp/s10wt
C=../shared/corpora
run() { # lr steps
  OMP_NUM_THREADS=1 taskset -c 1 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --threads 1 \
    --cell gru --max-steps $2 --lr $1 --out /tmp/s10/grulr/s$2_lr$1 > /tmp/s10/grulr/s$2_lr$1.log 2>&1
}
run 0.01 800; run 0.005 800; run 0.02 800; run 0.01 1500; run 0.005 1500
echo done > /tmp/s10/grulr/DONE
# The loaded-core stand-in by steps (README "Against the current default"): one core each.
# OMP_NUM_THREADS=1 taskset -c 0 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --threads 1 --max-steps 555 --lr 0.02 --out /tmp/s10/proxy_lstm
# OMP_NUM_THREADS=1 taskset -c 1 python -m poetgen train $C/tang_train.txt --val $C/tang_val.txt --threads 1 --cell gru --max-steps 444 --lr 0 --out /tmp/s10/proxy_gru

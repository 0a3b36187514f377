# Modern-rhyme poems that pass `poetgen check --rhyme modern --readings common` (the decoder's own
# readings), and `sample`'s wall time, before the checker filter (e2b9188) and now, side by side.
#   bash docs/runs/modern/modern_cmp.sh        (from the repository root; ~1 minute)
# `python -m` puts the working directory first on sys.path, so each tree runs from a scratch one.
HERE=$(pwd)
BASE=$(mktemp -d)/base && git worktree add -f -q "$BASE" e2b9188
TMP=$(mktemp -d) && cd "$TMP"
for tree in "$BASE" "$HERE"; do
  for form in 五绝 五律 七绝 七律; do
    start=$(date +%s.%N)
    PYTHONPATH=$tree OMP_NUM_THREADS=1 python -m poetgen sample -c default --form $form \
      --rhyme modern --n 16 --seed 3 > m.txt
    end=$(date +%s.%N)
    ok=$(PYTHONPATH=$tree python -m poetgen check m.txt --rhyme modern --readings common --json |
         python -c "import sys, json; print(sum(json.loads(l)['ok'] for l in sys.stdin))")
    echo "$([ "$tree" = "$BASE" ] && echo e2b9188 || echo now) $form pass=$ok/16 wall=$(echo "$end - $start" | bc)s"
  done
done
cd "$HERE" && git worktree remove --force "$BASE"

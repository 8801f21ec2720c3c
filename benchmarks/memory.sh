#!/usr/bin/env bash
# Peak memory and step time of the train step, each side measured in a process of its own (issue #14, item 4):
# ours with model.remat off and on, and mmagic's (the PyTorch step built from its classes, `--mmagic-only`), for
# ffhq x16 at batch 1 and cat x8 at batch 1 and 4. Needs the oracle install (`make oracle`) for the mmagic runs.
# Run it on an otherwise idle machine: the remat time ratio compares two processes.
#   bash benchmarks/memory.sh [OUT_DIR]        (default benchmarks/results; about 30 min on 2 CPU cores)
set -euo pipefail
out=${1:-benchmarks/results}
day=$(date +%F)
mkdir -p "$out"
run() {   # run NAME ARGS...
  local name=$1; shift
  # one process: D's minibatch-stddev over the whole batch, as the PyTorch side runs it
  python -m glean_jax.benchmark --mode train --json "$out/cpu-$name-$day.json" "$@" --config.model.mbstd_shards=1
}
run ffhq_x16-train-remat-off --config configs/ffhq_x16.py --batch-size 1 --repeats 3 --warmup 1 \
  --config.model.remat=False
run ffhq_x16-train-remat-on --config configs/ffhq_x16.py --batch-size 1 --repeats 3 --warmup 1 \
  --config.model.remat=True
run ffhq_x16-train-mmagic --config configs/ffhq_x16.py --batch-size 1 --repeats 3 --warmup 1 --mmagic-only
for b in 1 4; do
  run cat_x8-train-b$b-remat-off --config configs/cat_x8.py --batch-size $b --repeats 2 --warmup 1 \
    --config.model.remat=False
  run cat_x8-train-b$b-remat-on --config configs/cat_x8.py --batch-size $b --repeats 2 --warmup 1 \
    --config.model.remat=True
  run cat_x8-train-b$b-mmagic --config configs/cat_x8.py --batch-size $b --repeats 2 --warmup 1 --mmagic-only
done
python -m glean_jax.benchmark summarize "$out"/cpu-*-train-*-"$day".json

#!/bin/bash
# Issue 16: the Beauty and Online Retail rows rerun after the refactor (model card, trainer
# interface, configs), each trained from its configs/<dataset>.yaml file. Logs in raycart-work/logs/,
# metrics copied to benchmarks/results/config_rerun_<model>.json; summary by
# benchmarks/config_rerun.py. `bash benchmarks/config_rerun.sh beauty-1w` adds the Beauty rows of the
# sweep's 1-worker setting.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
R=".venv/bin/raycart train"
W=raycart-work
mkdir -p $W/logs benchmarks/results
[ -f $W/data/online-retail/dataset.json ] || .venv/bin/raycart data prepare --source online-retail \
    --input ../shared/data/online-retail/online_retail.csv.gz --output $W/data/online-retail
[ -f $W/data/beauty/dataset.json ] || .venv/bin/raycart data prepare --source amazon \
    --input ../shared/data/amazon/Beauty.txt --output $W/data/beauty
run() {  # name kind args...
  local name=$1; shift
  local t0=$(date +%s)
  $R "$@" --storage $W/ray-results-rerun > $W/logs/rerun-$name.log 2>&1
  echo "$name $(( $(date +%s) - t0 ))" >> $W/logs/rerun-times.txt
}
if [ "${1:-all}" = beauty-1w ]; then
  # the Beauty sweep's best trial exactly as the sweep ran it (1 worker, batch 128), from the same
  # file with two flags on top, and the two-stage system over it
  run beauty1w-retriever retriever --config configs/beauty.yaml --workers 1 --batch-size 128 \
      --data $W/data/beauty --out $W/models/rerun-beauty1w-retriever
  run beauty1w-ranker ranker --config configs/beauty.yaml --data $W/data/beauty \
      --retriever $W/models/rerun-beauty1w-retriever --out $W/models/rerun-beauty1w-ranker
  .venv/bin/python benchmarks/config_rerun.py
  exit 0
fi
: > $W/logs/rerun-times.txt
run or-retriever retriever --config configs/online-retail.yaml --data $W/data/online-retail --out $W/models/rerun-or-retriever
run or-ranker ranker --config configs/online-retail.yaml --data $W/data/online-retail \
    --retriever $W/models/rerun-or-retriever --out $W/models/rerun-or-ranker
run beauty-retriever retriever --config configs/beauty.yaml --data $W/data/beauty --out $W/models/rerun-beauty-retriever
run beauty-ranker ranker --config configs/beauty.yaml --data $W/data/beauty \
    --retriever $W/models/rerun-beauty-retriever --out $W/models/rerun-beauty-ranker
.venv/bin/python benchmarks/config_rerun.py

#!/bin/bash
# The ranker benchmark runs of BENCHMARKS.md (issue 4), sequential; logs in raycart-work/logs/.
# Needs the retrievers of the retriever section (raycart-work/models/...) and ../shared.
set -ex
R=".venv/bin/raycart train ranker"
T=../shared/models/all-MiniLM-L6-v2
C="--workers 2 --train-candidates 100 --eval-candidates 200 --epochs 20 --patience 3"
$R --data raycart-work/data/beauty --retriever raycart-work/models/beauty-retriever --out raycart-work/models/beauty-ranker $C --batch-size 64 > raycart-work/logs/beauty-ranker.log 2>&1
$R --data raycart-work/data/online-retail --scheme basket --retriever raycart-work/models/or-retriever-basket --out raycart-work/models/or-ranker $C > raycart-work/logs/or-ranker.log 2>&1
$R --data raycart-work/data/online-retail --scheme basket --retriever raycart-work/models/or-retriever-basket --out raycart-work/models/or-ranker-tuned $C --text-encoder $T --text-tune-layers 1 > raycart-work/logs/or-ranker-tuned.log 2>&1
$R --data raycart-work/data/sports --retriever raycart-work/models/sports-retriever --out raycart-work/models/sports-ranker $C > raycart-work/logs/sports-ranker.log 2>&1
.venv/bin/python benchmarks/ranker_latency.py --model raycart-work/models/beauty-ranker --data raycart-work/data/beauty > raycart-work/logs/ranker-latency.log 2>&1
.venv/bin/python benchmarks/retriever_ablation.py --variants "ids only" > raycart-work/logs/ablation-ids.log 2>&1
C30="--workers 2 --train-candidates 30 --eval-candidates 200 --epochs 8 --patience 3"
RET="raycart-work/models/ablation-loo-+_image_(all)"
$R --data raycart-work/data/synthetic-ablation --retriever "$RET" --out raycart-work/models/syn-ranker-frozen30 $C30 > raycart-work/logs/syn-ranker-frozen30.log 2>&1
$R --data raycart-work/data/synthetic-ablation --retriever "$RET" --out raycart-work/models/syn-ranker-text30 $C30 --text-encoder ../shared/models/all-MiniLM-L6-v2 --text-tune-layers 1 > raycart-work/logs/syn-ranker-text30.log 2>&1
$R --data raycart-work/data/synthetic-ablation --retriever "$RET" --out raycart-work/models/syn-ranker-image30 $C30 --image-encoder ../shared/models/mobilenet_v2-imagenet --image-tune-layers 1 > raycart-work/logs/syn-ranker-image30.log 2>&1

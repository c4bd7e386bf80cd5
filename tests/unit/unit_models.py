"""Small models shared by the unit tests (no Ray): item features, a candidate stage and a two-stage
pipeline over ``N_ITEMS`` items; pytest puts this folder on ``sys.path`` (``pythonpath`` in pyproject.toml)."""

import numpy as np
import torch

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.data.interactions import Interactions
from training.inference.candidates import CandidateGenerator
from training.inference.pipeline import Pipeline
from training.models.ranker import Ranker, RankerConfig
from training.models.retriever import ItemFeatures, RetrieverConfig, RetrieverScorer, TwoTower

N_ITEMS = 30
VOCAB = [f"a{i}" for i in range(5)]  # the attribute vocabulary of _feats


def _feats(n=N_ITEMS):
    attrs = [[i % 3, 3 + i % 2] for i in range(n)]  # attribute 0..2 = "category", 3..4 = "colour"
    indptr = np.concatenate([[0], np.cumsum([len(a) for a in attrs])])
    return ItemFeatures(n, np.ones(n, bool), indptr, np.concatenate(attrs), 5)


def _stage(train: Interactions, seed=0) -> CandidateGenerator:
    torch.manual_seed(seed)
    retriever = RetrieverScorer(TwoTower(RetrieverConfig.tiny(), _feats()))
    knn = ItemKNN(ItemKNNConfig.tiny()).fit(train)
    return CandidateGenerator.fit(retriever, knn, train, np.linspace(1, 30, N_ITEMS))


def _train() -> Interactions:
    rng = np.random.default_rng(0)
    return Interactions.from_lists([list(rng.choice(N_ITEMS, 6, replace=False)) for _ in range(40)], N_ITEMS)


def _pipeline() -> Pipeline:
    train = _train()
    stage = _stage(train)
    torch.manual_seed(0)
    return Pipeline(stage, Ranker(RankerConfig.tiny(), _feats()), VOCAB)

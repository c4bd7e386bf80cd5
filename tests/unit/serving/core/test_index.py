"""The FAISS vector index: exact search matches brute force, HNSW keeps recall, new items are found."""

import numpy as np
import pytest
import torch

from serving.core.index import IndexConfig, VectorIndex, recall_vs_exact
from training.evaluation.metrics import top_k


def test_exact_index_matches_brute_force_and_skips_excluded():
    rng = np.random.default_rng(0)
    vecs, q = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(8, 16)).astype(np.float32)
    index = VectorIndex(vecs)
    assert index.exact
    exclude = [np.array([0, 1, 2])] * 8
    ids, scores = index.search(q, 10, exclude)
    brute = torch.from_numpy(q @ vecs.T)
    brute[:, :3] = -torch.inf
    np.testing.assert_array_equal(ids, top_k(brute, 10).numpy())
    np.testing.assert_allclose(scores, np.take_along_axis(brute.numpy(), ids, 1), rtol=1e-5)


def test_hnsw_recall_and_runtime_additions():
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(5000, 32)).astype(np.float32)
    queries = rng.normal(size=(50, 32)).astype(np.float32)
    assert recall_vs_exact(vecs, queries, 10, IndexConfig.tiny()) >= 0.9
    index = VectorIndex(vecs, IndexConfig.tiny())
    assert not index.exact
    new = rng.normal(size=(1, 32)).astype(np.float32) * 10
    (new_id,) = index.add(new)
    assert new_id == 5000 and len(index) == 5001
    ids, _ = index.search(new, 1)
    assert ids[0, 0] == new_id  # a brand-new item is retrievable at once


def test_short_catalogue_pads():
    ids, scores = VectorIndex(np.eye(3, dtype=np.float32)).search(np.ones((1, 3)), 5, [np.array([1])])
    assert ids[0].tolist()[:2] in ([0, 2], [2, 0]) and ids[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()
    with pytest.raises(ValueError):
        VectorIndex(np.eye(3, dtype=np.float32)).search(np.ones((1, 4)), 1)


def test_ivf_recall_runtime_additions_and_small_catalogue_fallback():
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(4000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    cfg = IndexConfig(kind="ivf", ivf_nlist=16, ivf_nprobe=8)
    assert recall_vs_exact(vecs, queries, 10, cfg) >= 0.9
    index = VectorIndex(vecs, cfg)
    assert index.kind == "ivf"
    new = rng.normal(size=(1, 16)).astype(np.float32) * 10
    (new_id,) = index.add(new)
    ids, _ = index.search(new, 1)
    assert ids[0, 0] == new_id == 4000
    assert VectorIndex(vecs[:100], cfg).kind == "exact"  # too few points to train 16 cells
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="lsh")

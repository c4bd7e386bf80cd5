"""Items added after training get content vectors from the trained towers (no Ray)."""

import numpy as np
import pytest
import torch
from unit_models import N_ITEMS, VOCAB, _pipeline, _train

from training.data.interactions import Interactions
from training.inference.new_items import ContentEncoder, rows_table


def test_new_items_get_content_vectors_and_are_retrieved_and_ranked():
    pipeline = _pipeline()
    tower = pipeline.generator.retriever.model.items
    before = pipeline.generator.retriever.item_vecs.clone()
    before_scores = pipeline.score(None, _train().take_users(np.arange(3)))
    # two new items with the content (attributes) of items 0 and 1
    enc = ContentEncoder(VOCAB, {}, None, None)
    rows = rows_table([{"external_id": "new-a", "attributes": ["a0", "a3", "brand-new-tag"], "price": 5.0},
                       {"external_id": "new-b", "attributes": ["a1", "a4"]}])
    feats = enc.features(rows)
    assert feats.attr_ids.tolist() == [0, 3, 1, 4] and not feats.known.any()  # unknown tag dropped
    vecs = pipeline.add_items(feats, rows["price"].to_numpy(zero_copy_only=False))
    assert pipeline.num_items == N_ITEMS + 2
    torch.testing.assert_close(pipeline.generator.retriever.item_vecs[:N_ITEMS], before)  # old items unchanged
    # content only: item 0's vector without its id embedding
    torch.testing.assert_close(torch.from_numpy(vecs[0]), before[0] - tower.id_emb.weight[0])
    torch.testing.assert_close(torch.from_numpy(vecs[1]), before[1] - tower.id_emb.weight[1])
    assert pipeline.generator.log_price[-2] == pytest.approx(np.log1p(5.0)) and pipeline.generator.log_pop[-2:].tolist() == [0, 0]
    # old items score as before; the new ones can be candidates
    hist = _train().take_users(np.arange(3))
    hist = Interactions(hist.indptr, hist.items, hist.times, pipeline.num_items)
    after = pipeline.score(None, hist)
    assert after.shape == (3, N_ITEMS + 2)
    lists = pipeline.generator.generate(hist, N_ITEMS + 2)
    assert np.isin([N_ITEMS, N_ITEMS + 1], lists.items).all()
    # eval_candidates (30) exceeds the unseen items: every list now holds the two new items too
    assert (torch.isfinite(after).sum(1) == torch.isfinite(before_scores).sum(1) + 2).all()
    # a history made of the new item: user tower, kNN (no co-counts yet) and reasons all work
    recs = pipeline.recommend(Interactions.from_lists([[N_ITEMS]], pipeline.num_items), n=5)[0]
    assert len(recs) == 5 and all(r["reason"]["because_of"] == N_ITEMS for r in recs)
    for r in recs:  # shared attributes come from the new item's attribute list
        assert set(r["reason"]["shared"]) <= {"a0", "a3"}


def test_items_without_readable_content_are_refused():
    enc = ContentEncoder(VOCAB, {}, None, None)
    rows = rows_table([{"external_id": "x", "attributes": ["unheard-of"]},
                       {"external_id": "y", "attributes": ["a2"]}])
    assert enc.usable(rows) == [1]
    with_text = ContentEncoder(VOCAB, {"text": {"name_or_path": "unused"}}, 384, None)
    assert with_text.uses_text and not with_text.uses_image

"""The ranker, the candidate stage and the two-stage pipeline, without Ray."""

import numpy as np
import pytest
import torch
from unit_models import N_ITEMS, _feats, _stage, _train

from training.data.interactions import Interactions
from training.inference.pipeline import Pipeline
from training.models.ranker import Ranker, RankerConfig, listwise_loss
from training.models.retriever import RetrieverConfig, RetrieverScorer


def _planted_lists(rng, cats: np.ndarray, k: int):
    """Per row, ``k`` candidates outside category ``cats[b]`` (item % 3) but one, at a random
    position, inside it: ``(cands, positions, labels)``."""
    b = len(cats)
    cands = np.stack([rng.choice([i for i in range(N_ITEMS) if i % 3 != c], k) for c in cats])
    pos = rng.integers(0, k, b)
    cands[np.arange(b), pos] = [rng.choice([i for i in range(N_ITEMS) if i % 3 == c]) for c in cats]
    labels = torch.zeros(b, k, dtype=torch.bool)
    labels[torch.arange(b), torch.from_numpy(pos)] = True
    return torch.from_numpy(cands), pos, labels


def _fit(model: Ranker, steps: int, *loss_args) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(*loss_args).backward()
        opt.step()


def test_candidates_skip_history_and_mark_targets_without_inserting_them():
    train = _train()
    stage = _stage(train)
    hist = train.take_users(np.arange(5))
    plain = stage.generate(hist, 8)
    assert plain.items.shape == (5, 8) and plain.dense.shape == (5, 8, 6) and not plain.label.any()
    # targets: user 0's 3rd candidate, and for the others an unseen item outside their top 8
    outside = [int(np.setdiff1d(np.arange(N_ITEMS), np.r_[hist.row(u), plain.items[u]])[0]) for u in range(5)]
    targets = Interactions.from_lists([[int(plain.items[0, 2])]] + [[o] for o in outside[1:]], N_ITEMS)
    c = stage.generate(hist, 8, targets)
    np.testing.assert_array_equal(c.items, plain.items)  # targets never change the list
    assert c.label[0].tolist() == [False, False, True] + [False] * 5 and not c.label[1:].any()
    scores = stage.retriever.score(None, hist).numpy()
    for u in range(5):
        assert not np.isin(c.items[u], hist.row(u)).any()
        scores[u, hist.row(u)] = -np.inf
        # the rank feature is the item's rank under the retriever
        true_rank = (scores[u][None, :] > scores[u, c.items[u]][:, None]).sum(1)
        np.testing.assert_allclose(c.dense[u, :, 1], np.log1p(true_rank), rtol=1e-6)


def test_listwise_loss_handles_baskets_and_missing_candidates():
    logits = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    cands = torch.tensor([[4, 5, 6, -1]])  # the last slot is empty: its logit must not count
    one = listwise_loss(logits, cands, torch.tensor([[True, False, False, False]]))
    assert one.item() == pytest.approx(-torch.log_softmax(torch.tensor([2.0, 1.0, 0.0]), 0)[0].item())
    both = listwise_loss(logits, cands, torch.tensor([[True, True, False, False]]))
    assert both.item() < one.item()


def test_ranker_learns_to_use_the_history():
    """Planted rule: the true candidate shares the category (attribute i % 3) of the last history
    item; the ranker must find it through target attention (dense features carry no signal)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    cfg = RankerConfig(**{**RankerConfig.tiny().to_dict(), "dropout": 0.0, "use_id": False})
    model = Ranker(cfg, _feats())
    b, k = 64, 6
    hist = torch.from_numpy(rng.integers(0, N_ITEMS, (b, cfg.max_len)))
    cats = (hist[:, -1] % 3).numpy()
    cands, pos, labels = _planted_lists(rng, cats, k)
    dense = torch.zeros(b, k, 6)
    _fit(model, 150, hist, cands, dense, labels)
    model.eval()
    acc = (model(hist, cands, dense).argmax(1) == torch.from_numpy(pos)).float().mean().item()
    assert acc > 0.9, acc


def test_two_stage_round_trip_scores_and_reasons():
    train = _train()
    stage = _stage(train)
    torch.manual_seed(0)
    cfg = RankerConfig.tiny()
    ranker = Ranker(cfg, _feats())
    retriever_state = RetrieverScorer.state(stage.retriever.model, _feats())
    pipeline = Pipeline(stage, ranker, [f"a{i}" for i in range(5)])
    hist = train.take_users(np.arange(4))
    scores = pipeline.score(None, hist)
    assert scores.shape == (4, N_ITEMS)
    assert (torch.isfinite(scores).sum(1) == cfg.eval_candidates if cfg.eval_candidates < N_ITEMS - 6
            else torch.isfinite(scores).sum(1) == N_ITEMS - 6).all()
    config = {"ranker": cfg.to_dict(), "retriever": RetrieverConfig.tiny().to_dict(), "knn": stage.knn.state()[0],
              "attribute_vocab": [f"a{i}" for i in range(5)]}
    again = Pipeline.from_state(config, Pipeline.state(stage, ranker, retriever_state))
    torch.testing.assert_close(again.score(None, hist), scores)
    recs = again.recommend(hist, n=3)
    assert [len(r) for r in recs] == [3, 3, 3, 3]
    for u, rec in enumerate(recs):
        assert [r["score"] for r in rec] == sorted((r["score"] for r in rec), reverse=True)
        for r in rec:
            assert r["item"] not in hist.row(u)
            assert r["reason"]["because_of"] in hist.row(u)[-cfg.max_len:]
            src, item = r["reason"]["because_of"], r["item"]
            expect = {f"a{src % 3}"} & {f"a{item % 3}"} | {f"a{3 + src % 2}"} & {f"a{3 + item % 2}"}
            assert set(r["reason"]["shared"]) == expect


def test_event_types_steer_attention_and_the_cart_purchase_heads_learn():
    """Planted: the true candidate shares the category (i % 3) of the one history item the user
    *purchased* (the others were only viewed), and true candidates with an even id were bought."""
    from training.data.funnel import STAGES

    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    cfg = RankerConfig(**{**RankerConfig.tiny().to_dict(), "dropout": 0.0, "use_id": False, "use_stage": True,
                          "aux_weight": 1.0})
    model = Ranker(cfg, _feats())
    b, k, length = 128, 6, 4
    hist = torch.from_numpy(rng.integers(0, N_ITEMS, (b, length)))
    bought = rng.integers(0, length, b)
    stage = torch.full((b, length), STAGES["view"])
    stage[torch.arange(b), torch.from_numpy(bought)] = STAGES["purchase"]
    cats = (hist[torch.arange(b), torch.from_numpy(bought)] % 3).numpy()
    cands, pos, labels = _planted_lists(rng, cats, k)
    cand_stage = torch.where(cands % 2 == 0, STAGES["purchase"], STAGES["click"])
    dense = torch.zeros(b, k, 6)
    _fit(model, 200, hist, cands, dense, labels, stage, cand_stage)
    model.eval()
    logits, _, aux = model(hist, cands, dense, stage, return_all=True)
    assert (logits.argmax(1) == torch.from_numpy(pos)).float().mean().item() > 0.9
    p_buy = torch.sigmoid(aux[labels][:, 1])
    even = cands[labels] % 2 == 0
    assert p_buy[even].mean() > 0.8 and p_buy[~even].mean() < 0.2
    # without the event types the purchased item cannot be told apart: accuracy falls towards chance
    blind = model(hist, cands, dense, torch.full_like(stage, STAGES["view"]))
    assert (blind.argmax(1) == torch.from_numpy(pos)).float().mean().item() < 0.75


def test_candidates_from_an_exact_index_match_the_full_scoring_path():
    from serving.core.index import VectorIndex

    train = _train()
    stage = _stage(train)
    hist = train.take_users(np.arange(4))
    full = stage.generate(hist, 8)
    users = stage.retriever.user_vectors(hist).numpy()
    index = VectorIndex(stage.retriever.item_vecs.numpy())
    items, scores = index.search(users, 8, [hist.row(u) for u in range(4)])
    found = stage.from_search(hist, items, scores)
    np.testing.assert_array_equal(found.items, full.items)
    np.testing.assert_allclose(found.dense, full.dense, rtol=1e-4, atol=1e-5)


def test_ranker_scores_with_the_batch_items_vectors_equal_the_whole_table():
    """The ranker embeds only the batch's items (ItemTower.rows), as the whole table would."""
    torch.manual_seed(0)
    model = Ranker(RankerConfig.tiny(), _feats()).eval()
    history = torch.tensor([[-1, -1, 3, 4], [5, 6, 7, 8]])
    cands = torch.tensor([[1, 2, 9, 3], [0, 29, 8, 11]])
    dense = torch.randn(2, 4, 6)
    got = model(history, cands, dense)
    whole = model.items.all_items()
    model.items.rows = lambda ids: whole[ids]  # the earlier computation: every item's vector
    torch.testing.assert_close(got, model(history, cands, dense))

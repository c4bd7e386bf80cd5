import numpy as np
import torch

from training.models.retriever import ItemFeatures, RetrieverConfig, TwoTower, left_pad


def _feats(n=12, text_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    attrs = [[i % 3, 3 + i % 2] for i in range(n)]
    indptr = np.concatenate([[0], np.cumsum([len(a) for a in attrs])])
    return ItemFeatures(n, np.ones(n, bool), indptr, np.concatenate(attrs), 5,
                        text=rng.normal(size=(n, text_dim)).astype(np.float32))


def test_padding_does_not_change_the_user_vector():
    torch.manual_seed(0)
    model = TwoTower(RetrieverConfig.tiny(), _feats()).eval()
    short = torch.tensor(left_pad([np.array([3, 4, 5])], 3))
    long = torch.tensor(left_pad([np.array([3, 4, 5])], 8))
    torch.testing.assert_close(model(short), model(long), atol=1e-5, rtol=1e-5)
    empty = torch.tensor(left_pad([np.array([], dtype=np.int64)], 4))
    assert torch.isfinite(model(empty)).all()


def test_unseen_item_gets_a_content_vector_but_no_id_vector():
    feats = _feats()
    feats.known[7] = False
    content = TwoTower(RetrieverConfig.tiny(), feats).items.all_items()
    assert torch.isfinite(content[7]).all() and content[7].abs().sum() > 0
    ids_only = TwoTower(RetrieverConfig(**{**RetrieverConfig.tiny().to_dict(), "use_attributes": False,
                                           "use_text": False}), feats)
    pre_norm = ids_only.items.id_emb.weight * ids_only.items.known[:, None]
    assert pre_norm[7].abs().sum() == 0  # an id-only model has nothing for an unseen item


def test_item_rows_equal_the_whole_table_rows():
    feats = _feats(n=20)
    feats.known[[2, 9]] = False
    feats.attr_indptr[5:] -= 2  # item 4 has no attributes (an empty bag)
    feats.attr_ids = np.delete(feats.attr_ids, [8, 9])
    model = TwoTower(RetrieverConfig.tiny(), feats).eval()
    ids = torch.tensor([9, 4, 0, 19, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(model.items.rows(ids), model.items.all_items()[ids])


def test_sampled_loss_matches_the_whole_table_computation():
    """The sampled softmax computes the vectors of the batch's items only; the loss is the one
    the whole item table gives."""
    torch.manual_seed(0)
    feats = _feats(n=30)
    cfg = RetrieverConfig(**{**RetrieverConfig.tiny().to_dict(), "loss": "sampled", "num_negatives": 7,
                             "dropout": 0.0})
    model = TwoTower(cfg, feats).eval()
    seqs = torch.tensor([[0, 1, 2, 3], [-1, 4, 5, 6]])
    targets = torch.tensor([[1, 2, 3, 4], [-1, 5, 6, 29]])
    log_q = torch.log(torch.full((30,), 1 / 30))
    got = model.loss(seqs, targets, log_q, torch.Generator().manual_seed(3))
    neg = torch.multinomial(log_q.exp(), 7, replacement=True, generator=torch.Generator().manual_seed(3))
    vecs = model.items.all_items()
    valid = targets >= 0
    h, y = model.encode(seqs, vecs)[valid], targets[valid]
    pos = (h * vecs[y]).sum(-1, keepdim=True) - log_q[y, None]
    negl = (h @ vecs[neg].T - log_q[neg][None, :]).masked_fill(neg[None, :] == y[:, None], float("-inf"))
    want = torch.nn.functional.cross_entropy(torch.cat([pos, negl], 1), torch.zeros(len(y), dtype=torch.long))
    torch.testing.assert_close(got, want)


def test_full_and_sampled_losses_train():
    torch.manual_seed(0)
    feats = _feats()
    seqs = torch.tensor([[0, 1, 2, 3], [-1, 4, 5, 6]])
    targets = torch.tensor([[1, 2, 3, 4], [-1, 5, 6, 7]])
    for loss in ("full", "sampled"):
        model = TwoTower(RetrieverConfig(**{**RetrieverConfig.tiny().to_dict(), "loss": loss, "dropout": 0.0}), feats)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        log_q = torch.full((12,), -np.log(12.0))
        first = None
        for _ in range(60):
            opt.zero_grad()
            value = model.loss(seqs, targets, log_q=log_q, generator=torch.Generator().manual_seed(0))
            value.backward()
            opt.step()
            first = value.item() if first is None else first
        assert value.item() < 0.5 * first, (loss, first, value.item())


def test_training_sequences_shift_targets_by_one():
    from training.data.interactions import Interactions
    from training.jobs.train_retriever import training_sequences

    seqs = training_sequences(Interactions.from_lists([[5, 6, 7], [8], [1, 2]], 10), max_len=3)
    assert len(seqs) == 2 and seqs.inputs.shape == seqs.targets.shape == (2, 3)  # one item: no training pair
    assert seqs.inputs[0].tolist() == [-1, 5, 6] and seqs.targets[0].tolist() == [-1, 6, 7]
    assert seqs.inputs[1].tolist() == [-1, -1, 1] and seqs.targets[1].tolist() == [-1, -1, 2]
    assert list(seqs.columns()) == ["inputs", "targets"]  # the Ray Dataset's columns, by name


def test_basket_targets_skip_basket_mates_and_cover_the_next_basket():
    from training.data.interactions import Interactions
    from training.jobs.train_retriever import sequence_targets, training_sequences

    items, times = np.array([1, 2, 3, 4, 5, 6, 7]), np.array([0, 0, 5, 5, 5, 9, 9])
    x, y = sequence_targets(items, times, "basket")
    assert x.tolist() == [1, 2, 3, 4, 5]  # the last basket is never an input
    assert y.tolist() == [3, 4, 6, 7, 6]  # always an item of the *next* timestamp, never a basket-mate
    assert set(y[:2]) == {3, 4} and set(y[2:]) == {6, 7}
    assert sequence_targets(np.array([1, 2]), np.array([3, 3]), "basket")[0].size == 0  # one basket: nothing
    # repeats are never targets (history is excluded from the ranking); no new item -> no target
    _, y = sequence_targets(np.array([1, 2, 1, 3, 2]), np.array([0, 0, 1, 1, 2]), "basket")
    assert y.tolist() == [3, 3, -1, -1]
    seqs = Interactions(np.array([0, 7]), items, times, 10)
    out = training_sequences(seqs, max_len=4, target="basket")
    assert out.inputs[0].tolist() == [2, 3, 4, 5] and out.targets[0].tolist() == [4, 6, 7, 6]


def test_training_windows_cover_long_histories_newest_first():
    from training.data.interactions import Interactions
    from training.jobs.train_retriever import training_sequences

    seqs = Interactions.from_lists([list(range(1, 11)), [1, 2]], 20)
    out = training_sequences(seqs, max_len=4, windows=3)
    # user 0: 9 pairs -> windows [6..9], [2..5], [1]; user 1: one window
    assert out.inputs.tolist() == [[6, 7, 8, 9], [2, 3, 4, 5], [-1, -1, -1, 1], [-1, -1, -1, 1]]
    assert out.targets[0].tolist() == [7, 8, 9, 10] and out.targets[2].tolist() == [-1, -1, -1, 2]
    assert len(training_sequences(seqs, max_len=4, windows=1)) == 2


def test_run_name_changes_with_the_config():
    from dataclasses import replace

    from training.jobs.train_retriever import RetrieverJob, run_name

    job = RetrieverJob(data="d", out="o", model=RetrieverConfig.tiny())
    assert run_name(job) == run_name(replace(job, out="elsewhere"))
    assert run_name(job) != run_name(replace(job, model=replace(job.model, dim=32)))

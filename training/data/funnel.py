"""How far down the funnel (view < click < cart < purchase) a user went with each item.

The sequences models train on keep a user's *first* interaction with each item; what happened
next with that item -- a click, a cart, a purchase -- is what the ranker's event-type feature and
its multi-task heads need. :func:`stage_map` gives, for every (user, item) of the deduplicated
sequence, the deepest stage the user reached with the item **before moving on to the next new
item**: that stage is known by the time the next item is predicted, so using it for history items
never leaks the future, and for a target item it is the label of the cart/purchase heads.

>>> import numpy as np
>>> users, items = np.array([0, 0, 0, 0, 0]), np.array([7, 7, 8, 7, 8])
>>> times, kinds = np.array([1, 2, 3, 4, 5]), np.array(["view", "cart", "view", "purchase", "click"])
>>> m = stage_map(users, items, times, np.arange(5), kinds, num_users=1, num_items=9)
>>> int(m[0, 7]), int(m[0, 8])   # the purchase of 7 came after item 8 started: not counted
(3, 2)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.data.schema import EVENT_TYPES

STAGES = {kind: i + 1 for i, kind in enumerate(EVENT_TYPES)}  # 0 = no interaction / padding
NUM_STAGES = len(STAGES) + 1


def stage_map(users: np.ndarray, items: np.ndarray, times: np.ndarray, seq: np.ndarray, kinds: np.ndarray,
              num_users: int, num_items: int) -> sp.csr_matrix:
    """``(num_users, num_items)`` int8 CSR: the stage code (1 view .. 4 purchase) of each deduplicated
    (user, item), counting only events before the user's next new item began."""
    order = np.lexsort((seq, times, users))
    u, i, t = users[order], items[order], times[order]
    code = np.vectorize(STAGES.get, otypes=[np.int8])(kinds[order]) if len(kinds) else np.zeros(0, np.int8)
    key = u.astype(np.int64) * num_items + i
    uniq, first = np.unique(key, return_index=True)  # first event of each (user, item)
    firsts = np.sort(first)  # positions of first occurrences, in (user, time) order
    # deadline of a first occurrence = time of the same user's next first occurrence (else +inf)
    nxt_t = np.r_[t[firsts[1:]], np.iinfo(np.int64).max]
    same_user = np.r_[u[firsts[1:]] == u[firsts[:-1]], False]
    deadline_sorted = np.where(same_user, nxt_t, np.iinfo(np.int64).max)
    pair_of_first = np.searchsorted(uniq, key[firsts])
    deadline = np.empty(len(uniq), np.int64)
    deadline[pair_of_first] = deadline_sorted
    pair = np.searchsorted(uniq, key)
    ok = t < deadline[pair]
    ok[firsts] = True  # the first event itself always counts
    best = np.zeros(len(uniq), np.int8)
    np.maximum.at(best, pair[ok], code[ok])
    return sp.csr_matrix((best, (uniq // num_items, uniq % num_items)), shape=(num_users, num_items))


def dataset_stage_map(ds) -> sp.csr_matrix | None:
    """:func:`stage_map` of a :class:`~training.data.dataset.Dataset`; ``None`` when the events have a
    single type (nothing to learn from)."""
    ev = ds.events
    kinds = ev["event_type"].to_numpy(zero_copy_only=False)
    if len(np.unique(kinds)) < 2:
        return None
    import pyarrow as pa

    return stage_map(ev["user_id"].to_numpy(), ev["item_id"].to_numpy(), ev["timestamp"].cast(pa.int64()).to_numpy(),
                     ev["seq"].to_numpy(), kinds, ds.num_users, ds.num_items)


def lookup(stages: sp.csr_matrix | None, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Stage codes for ``users[b]`` x ``items[b, ...]`` (-1 items -> 0); zeros without a map."""
    out = np.zeros(items.shape, np.int64)
    if stages is None:
        return out
    ok = items >= 0
    rows = np.broadcast_to(users.reshape((-1,) + (1,) * (items.ndim - 1)), items.shape)
    out[ok] = np.asarray(stages[rows[ok], items[ok]]).ravel()
    return out

"""A ranking model as a target policy on the serving log: known truth by simulation (no Ray)."""

import numpy as np
import pyarrow as pa

from training.evaluation.ope.slate_target import slate_log_prob, target_slate_value

ITEMS = [f"i{j}" for j in range(8)]
ATTRACT = dict(zip(ITEMS, [0.35, 0.2, 0.15, 0.1, 0.05, 0.05, 0.03, 0.02]))
GOOD = ITEMS  # best first
BAD = ITEMS[::-1]


def _eps_greedy(ranking, k, eps, rng):
    remaining, slate, probs = list(ranking), [], []
    for _ in range(k):
        j = rng.integers(len(remaining)) if rng.random() < eps else 0
        item = remaining[j]
        probs.append(eps / len(remaining) + (1 - eps) * (j == 0))
        slate.append(item)
        remaining.remove(item)
    return slate, probs


def _click(slate, rng):  # cascade: the first attractive item is clicked, then the shopper stops
    for item in slate:
        if rng.random() < ATTRACT[item]:
            return item
    return None


def _log(ranking, eps, n, seed):
    rng = np.random.default_rng(seed)
    imp = {k: [] for k in ("request_id", "user_id", "item_id", "position", "propensity")}
    ev = []
    for r in range(n):
        slate, probs = _eps_greedy(ranking, 3, eps, rng)
        for pos, (item, p) in enumerate(zip(slate, probs)):
            for key, v in zip(imp, (f"r{r}", f"u{r % 7}", item, pos, p)):
                imp[key].append(v)
        hit = _click(slate, rng)
        if hit:
            ev.append((f"r{r}", hit, "click"))
    return pa.table(imp), pa.table({"request_id": [e[0] for e in ev], "item_id": [e[1] for e in ev],
                                    "event": [e[2] for e in ev]})


def _truth(ranking, eps, n=200_000, seed=7):
    rng = np.random.default_rng(seed)
    return np.mean([_click(_eps_greedy(ranking, 3, eps, rng)[0], rng) is not None for _ in range(n)])


def test_log_prob_of_a_slate():
    assert np.isclose(np.exp(slate_log_prob(["a", "b", "c"], ["a", "b"], 0.0)), 1.0)
    assert np.isclose(np.exp(slate_log_prob(["a", "b", "c"], ["b"], 0.3)), 0.1)  # explored: 0.3 / 3
    assert slate_log_prob(["a", "b"], ["z"], 0.3) == float("-inf")  # not a candidate of the target


def test_a_model_target_is_estimated_without_bias_and_a_worse_model_scores_lower():
    good_truth, bad_truth = _truth(GOOD, 0.05), _truth(BAD, 0.05)
    covered, goods, bads = 0, [], []
    for seed in range(8):
        imp, ev = _log(GOOD, 0.5, 5000, seed)  # the logger explores a lot: common support for both targets
        good = target_slate_value(imp, ev, lambda users: [GOOD] * len(users), 0.05, bootstrap=300, seed=seed)
        bad = target_slate_value(imp, ev, lambda users: [BAD] * len(users), 0.05, bootstrap=300, seed=seed)
        covered += good["snips"]["ci95"][0] <= good_truth <= good["snips"]["ci95"][1]
        goods.append(good["snips"]["value"])
        bads.append(bad["snips"]["value"])
        assert bad["effective_sample_size"] < good["effective_sample_size"]
    assert covered >= 6, covered
    assert abs(np.mean(goods) - good_truth) < 0.02
    assert np.mean(bads) < np.mean(goods) - 0.1 and abs(np.mean(bads) - bad_truth) < 0.05


def test_the_logger_as_its_own_target_has_weights_one():
    imp, ev = _log(GOOD, 0.3, 500, 0)
    res = target_slate_value(imp, ev, lambda users: [GOOD] * len(users), 0.3, bootstrap=0)
    assert np.isclose(res["max_weight"], 1.0) and np.isclose(res["ips"]["value"], res["logged"]["value"])

"""Logged feedback and target policies for the off-policy estimators (:mod:`training.evaluation.ope.estimators`).

* :func:`bandit_log`: one action per round at a position -- the ``bandit`` table of a prepared Open
  Bandit Dataset (``raycart data prepare --source obd``). Actions are the dataset's item ids,
  positions the logged slots (OBD: 1-3, stored 0-based here), rewards the clicks; the reward
  model reads the user-item affinity of each action and the one-hot user features.
* :func:`read_target_policy`: a CSV or Parquet table ``item_id, position, probability`` (item ids
  as the dataset's ``external_id``, positions as logged), optionally with a ``round`` column
  (``round_id`` of the log) for a policy that depends on the round's context. Each (round,
  position) must sum to 1.

Plain pyarrow/numpy, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data.tabular import read_tabular
from training.evaluation.ope.estimators import LoggedFeedback, OPEError
from training.evaluation.ope.reward_model import RewardFeatures


@dataclass(frozen=True)
class BanditLog:
    logged: LoggedFeedback
    features: RewardFeatures
    item_ids: list[str]  # external id per action
    positions: np.ndarray  # the logged position value per 0-based slot
    round_ids: np.ndarray  # round_id per round


def bandit_log(dataset_dir: str, policy: str | None = None) -> BanditLog:
    """The dataset's ``bandit`` table (only ``policy``'s rounds when given, e.g. ``random``)."""
    from training.data.dataset import load_dataset

    ds = load_dataset(dataset_dir)
    table = getattr(ds, "bandit", None)
    if table is None or table.num_rows == 0:
        raise OPEError(f"{dataset_dir}: no logged bandit feedback (a 'bandit' table: prepare an Open Bandit "
                       "Dataset with `raycart data prepare --source obd`, or use --feedback for the serving log)")
    if policy is not None:
        table = table.filter(pc.equal(table["policy"], policy))
        if table.num_rows == 0:
            raise OPEError(f"{dataset_dir}: no rounds logged by policy {policy!r}")
    positions = np.unique(table["position"].to_numpy())
    slot = np.searchsorted(positions, table["position"].to_numpy())
    n_items = ds.items.num_rows
    logged = LoggedFeedback(reward=table["click"].to_numpy().astype(np.float64),
                            action=table["item_id"].to_numpy().astype(np.int64), position=slot.astype(np.int64),
                            pscore=table["propensity"].to_numpy().astype(np.float64), n_actions=n_items,
                            n_positions=len(positions))
    per_action = per_round = None
    if "affinity" in table.column_names and table["affinity"].null_count == 0:
        aff = np.asarray(table["affinity"].to_pylist(), dtype=np.float64)
        if aff.ndim == 2 and aff.shape[1] == n_items:
            per_action = aff[:, :, None]
    if "user_features" in table.column_names and table["user_features"].null_count == 0:
        cols = list(zip(*table["user_features"].to_pylist()))
        onehots = []
        for col in cols:
            values, codes = np.unique(np.asarray(col, dtype=object).astype(str), return_inverse=True)
            onehots.append(np.eye(len(values))[codes])
        per_round = np.hstack(onehots) if onehots else None
    return BanditLog(logged, RewardFeatures(per_action, per_round), ds.items["external_id"].to_pylist(), positions,
                     table["round_id"].to_numpy())


def read_target_policy(path: str, log: BanditLog) -> np.ndarray:
    """The table at ``path`` as ``action_dist`` of shape ``(rounds, actions, positions)``."""
    table = read_tabular(path, {"item_id": pa.string()}, what="target policy")
    missing = [c for c in ("item_id", "position", "probability") if c not in table.column_names]
    if missing:
        raise OPEError(f"{path}: target policy needs columns item_id, position, probability (missing {missing})")
    if table.num_rows == 0:
        raise OPEError(f"{path}: the target policy table is empty")
    index = {x: i for i, x in enumerate(log.item_ids)}
    items = [str(x) for x in table["item_id"].to_pylist()]
    unknown = sorted({x for x in items if x not in index})
    if unknown:
        raise OPEError(f"{path}: unknown item_id(s) {unknown[:5]} (not in the dataset's items)")
    pos_values = table["position"].to_numpy(zero_copy_only=False)
    slot = np.searchsorted(log.positions, pos_values)
    slot = np.minimum(slot, len(log.positions) - 1)
    if (log.positions[slot] != pos_values).any():
        bad = pos_values[log.positions[slot] != pos_values][0]
        raise OPEError(f"{path}: position {bad} was never logged (logged: {log.positions.tolist()})")
    prob = table["probability"].to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(prob).all() or (prob < 0).any():
        raise OPEError(f"{path}: probability must be finite and >= 0")
    act = np.asarray([index[x] for x in items], dtype=np.int64)
    n, a, k = log.logged.n, log.logged.n_actions, log.logged.n_positions
    if "round" in table.column_names:
        round_pos = {r: i for i, r in enumerate(log.round_ids.tolist())}
        rounds = table["round"].to_pylist()
        absent = [r for r in rounds if r not in round_pos]
        if absent:
            raise OPEError(f"{path}: round(s) {absent[:5]} are not in the log")
        dist = np.zeros((n, a, k))
        np.add.at(dist, (np.asarray([round_pos[r] for r in rounds]), act, slot), prob)
    else:
        one = np.zeros((a, k))
        np.add.at(one, (act, slot), prob)
        dist = np.broadcast_to(one, (n, a, k))
    sums = dist.sum(axis=1)
    bad = np.argwhere(np.abs(sums - 1) > 1e-6)
    if len(bad):
        i, s = bad[0]
        where = f"round {log.round_ids[i]}, " if "round" in table.column_names else ""
        raise OPEError(f"{path}: probabilities at {where}position {log.positions[s]} sum to {sums[i, s]:.6g}, not 1")
    return dist


def write_target_policy(path: str, item_ids: list[str], positions: np.ndarray, dist: np.ndarray) -> None:
    """A round-independent ``(actions, positions)`` policy as a table :func:`read_target_policy` reads."""
    import pyarrow.parquet as pq

    a, k = np.nonzero(dist >= 0)
    table = pa.table({"item_id": [item_ids[i] for i in a], "position": positions[k].astype(np.int64),
                      "probability": dist[a, k].astype(np.float64)})
    if path.endswith(".csv"):
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path)

"""Open Bandit Dataset (Saito et al., NeurIPS 2021 datasets track), ZOZOTOWN fashion.

Logged bandit feedback, kept as such in the ``bandit`` table: round, time, shown item, slot
(1-3), click, the logging policy's propensity, and the context the policy saw (four hashed
user features and the user-item affinity vector). Clicks are also written as ``click``
events; OBD has no user ids, so every round's context hash stands in for a user. Item
features (a standardised price and three hashed categories) become item attributes.

Input: the OBD root (``random/`` and ``bts/`` inside, campaign chosen by ``campaign``) or one
``<policy>/<campaign>`` directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.sources import Prepared
from training.data.tabular import read_tabular, require_columns

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")


def _dirs(root: Path, campaign: str) -> list[tuple[str, str, Path]]:
    if campaign not in CAMPAIGNS:
        raise DataError(f"obd: unknown campaign '{campaign}' (expected one of {', '.join(CAMPAIGNS)})")
    if (root / f"{root.name}.csv").exists() and root.parent.name in POLICIES:
        return [(root.parent.name, root.name, root)]
    found = [(p, campaign, root / p / campaign) for p in POLICIES if (root / p / campaign).is_dir()]
    if not found:
        raise DataError(f"{root}: not an Open Bandit Dataset folder (expected random/{campaign}/ "
                        f"or bts/{campaign}/ inside, or a <policy>/<campaign> folder)")
    return found


def prepare(input: str, campaign: str = "all") -> Prepared:
    root = Path(input)
    if not root.is_dir():
        raise DataError(f"{input}: no such directory (expected the Open Bandit Dataset folder)")
    logs, item_contexts = [], []
    for policy, camp, d in _dirs(root, campaign):
        df = read_tabular(str(d / f"{camp}.csv"), what="OBD log").to_pandas()
        require_columns(pa.Table.from_pandas(df.head(0)),
                        ["timestamp", "item_id", "position", "click", "propensity_score"], str(d / f"{camp}.csv"))
        df["policy"], df["campaign"] = policy, camp
        logs.append(df)
        item_contexts.append(read_tabular(str(d / "item_context.csv"), what="OBD item context").to_pandas())
    log = pd.concat(logs, ignore_index=True)
    contexts = item_contexts[0]  # every folder has one; the first is used
    user_cols = sorted(c for c in log.columns if c.startswith("user_feature_"))
    aff_cols = sorted((c for c in log.columns if c.startswith("user-item_affinity_")),
                      key=lambda c: int(c.rsplit("_", 1)[1]))
    n_items = int(contexts["item_id"].max()) + 1
    if log["item_id"].max() >= n_items:
        raise DataError(f"{input}: logs show item ids beyond item_context.csv ({n_items} items)")
    contexts = contexts.set_index("item_id").reindex(range(n_items))
    feat_cols = [c for c in contexts.columns if c.startswith("item_feature_")]
    items = pa.table({
        "item_id": np.arange(n_items, dtype=np.int64),
        "external_id": [str(i) for i in range(n_items)],
        "attributes": [[f"{c}={row[c]}" for c in feat_cols[1:]] for _, row in contexts.iterrows()],
        "price": contexts[feat_cols[0]].to_numpy(dtype=np.float64) if feat_cols else None,
    })
    ts = pd.to_datetime(log["timestamp"], utc=True)
    user_key = log[user_cols].astype(str).agg("|".join, axis=1)
    user_codes, user_ext = pd.factorize(user_key, sort=True)
    bandit = pa.table({
        "round_id": np.arange(len(log), dtype=np.int64),
        "timestamp": pa.array(ts.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
        "item_id": log["item_id"].to_numpy(dtype=np.int64),
        "position": log["position"].to_numpy(dtype=np.int32),
        "click": log["click"].to_numpy(dtype=np.int8),
        "propensity": log["propensity_score"].to_numpy(dtype=np.float64),
        "policy": log["policy"].tolist(),
        "campaign": log["campaign"].tolist(),
        "user_features": log[user_cols].astype(str).to_numpy().tolist(),
        "affinity": pa.array(log[aff_cols].to_numpy(dtype=np.float32).tolist(), type=pa.list_(pa.float32())),
    })
    clicked = log["click"].to_numpy() == 1
    users = pa.table({"user_id": np.arange(len(user_ext), dtype=np.int64),
                      "external_id": [str(u) for u in user_ext]})
    events = pa.table({
        "user_id": user_codes[clicked].astype(np.int64),
        "item_id": log.loc[clicked, "item_id"].to_numpy(dtype=np.int64),
        "timestamp": bandit["timestamp"].filter(pa.array(clicked)),
        "event_type": ["click"] * int(clicked.sum()),
        "seq": np.flatnonzero(clicked).astype(np.int64),
    })
    report = [f"{len(log):,} logged rounds ({', '.join(sorted(set(log['policy'])))}; campaign {campaign}), "
              f"{n_items} items, {int(clicked.sum()):,} clicks (CTR {clicked.mean():.4f})"]
    ds = Dataset(items=items, users=users, events=events, bandit=bandit, source=f"obd:{campaign}",
                 notes={"users": "context hashes of the four user features (OBD has no user ids)"})
    return Prepared(ds, report=report)

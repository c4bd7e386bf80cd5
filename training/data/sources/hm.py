"""H&M Personalized Fashion Recommendations sample (Kaggle): products with text and photos.

Input: a directory with ``articles_sample.parquet``, ``customers_sample.parquet``,
``transactions_sample.parquet`` and ``images/<article_id>.jpg``. Titles are ``prod_name``,
descriptions ``detail_desc``; the product type, group, colour, pattern, department, section
and garment group become attributes. Photos that exist are copied into the dataset's
``images/`` so the dataset is self-contained (also on S3); items without a photo have none.
Transactions are daily (``t_dat``), so purchases on one day keep their file order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from training.common import storage
from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.sources import Prepared
from training.data.tabular import read_tabular, require_columns

ATTRIBUTES = ["product_type_name", "product_group_name", "colour_group_name",
              "graphical_appearance_name", "department_name", "section_name", "garment_group_name",
              "index_group_name"]


def prepare(input: str) -> Prepared:
    if storage.is_s3(input):
        raise DataError(f"{input}: the hm source reads a local directory (images are copied)")
    root = Path(input)
    if not root.is_dir():
        raise DataError(f"{input}: no such directory (expected the H&M sample folder)")
    articles = read_tabular(str(root / "articles_sample.parquet"), what="H&M articles").to_pandas()
    tx = read_tabular(str(root / "transactions_sample.parquet"), what="H&M transactions").to_pandas()
    customers_path = root / "customers_sample.parquet"
    require_columns(pa.Table.from_pandas(articles.head(0)), ["article_id", "prod_name", "detail_desc"],
                    str(root / "articles_sample.parquet"))
    require_columns(pa.Table.from_pandas(tx.head(0)), ["t_dat", "customer_id", "article_id", "price"],
                    str(root / "transactions_sample.parquet"))

    articles = articles.sort_values("article_id").reset_index(drop=True)
    item_index = pd.Series(np.arange(len(articles)), index=articles["article_id"].to_numpy())
    unknown = ~tx["article_id"].isin(item_index.index)
    if unknown.any():
        raise DataError(f"{root}/transactions_sample.parquet: {int(unknown.sum())} rows refer to "
                        f"articles not in articles_sample.parquet (e.g. {tx.loc[unknown, 'article_id'].iloc[0]})")
    images_dir = root / "images"
    photos = {p.stem: p for p in images_dir.glob("*.jpg")} if images_dir.is_dir() else {}
    ext_ids = [f"{a:010d}" for a in articles["article_id"]]
    image_col = [f"images/{e}.jpg" if e in photos else None for e in ext_ids]
    price = tx.groupby("article_id")["price"].median()
    items = pa.table({
        "item_id": np.arange(len(articles), dtype=np.int64),
        "external_id": ext_ids,
        "title": articles["prod_name"].astype(str).tolist(),
        "description": [d if isinstance(d, str) else None for d in articles["detail_desc"]],
        "category": articles["product_type_name"].astype(str).tolist(),
        "attributes": [[f"{c.removesuffix('_name')}={row[c]}" for c in ATTRIBUTES if c in row and pd.notna(row[c])]
                       for row in articles.to_dict("records")],
        "price": pa.array(price.reindex(articles["article_id"]).to_numpy(dtype=np.float64), from_pandas=True),
        "image": image_col,
    })
    customer_ids = np.sort(tx["customer_id"].unique())
    attrs = {}
    if customers_path.exists():
        cust = read_tabular(str(customers_path), what="H&M customers").to_pandas().set_index("customer_id")
        for cid in customer_ids:
            if cid in cust.index:
                row = cust.loc[cid]
                attrs[cid] = [f"age={int(row['age'])}"] if pd.notna(row.get("age")) else []
    user_index = pd.Series(np.arange(len(customer_ids)), index=customer_ids)
    users = pa.table({
        "user_id": np.arange(len(customer_ids), dtype=np.int64),
        "external_id": customer_ids.tolist(),
        "attributes": [attrs.get(c, []) for c in customer_ids],
    })
    ts = pd.to_datetime(tx["t_dat"], errors="coerce")
    if ts.isna().any():
        raise DataError(f"{root}/transactions_sample.parquet: column 't_dat' has non-dates "
                        f"(e.g. {tx.loc[ts.isna(), 't_dat'].iloc[0]!r})")
    events = pa.table({
        "user_id": user_index.reindex(tx["customer_id"]).to_numpy(dtype=np.int64),
        "item_id": item_index.reindex(tx["article_id"]).to_numpy(dtype=np.int64),
        "timestamp": pa.array(ts.to_numpy(dtype="datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
        "event_type": ["purchase"] * len(tx),
        "value": tx["price"].to_numpy(dtype=np.float64),
        "seq": np.arange(len(tx), dtype=np.int64),
    })
    used = sorted({p for p in image_col if p})

    def copy_images(out: Path) -> None:
        (out / "images").mkdir()
        for rel in used:
            shutil.copyfile(images_dir / Path(rel).name, out / rel)

    report = [f"{len(articles):,} articles ({len(used)} with a photo), {len(customer_ids):,} customers, "
              f"{len(tx):,} purchases"]
    ds = Dataset(items=items, users=users, events=events, source="hm",
                 splits={"loo": {"kind": "loo"}, "cold": {"kind": "cold"}},
                 notes={"images": len(used)})
    return Prepared(ds, extra=copy_images, report=report)

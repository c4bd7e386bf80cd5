"""UCI Online Retail (Chen, Sain & Guo, 2012): a UK gift shop's transactions, Dec 2010 - Dec 2011.

Cleaning, in order (each step's row count goes into the report and the manifest):

1. drop rows without ``CustomerID`` (guest checkouts cannot be sequenced);
2. drop cancellations (``InvoiceNo`` starting with ``C``);
3. drop rows with ``Quantity <= 0`` (returns and stock adjustments);
4. drop non-product stock codes: anything that does not start with five digits (``POST``,
   ``DOT``, ``M``, ``C2``, ``BANK CHARGES``, ``AMAZONFEE``, ``PADS``, ...);
5. one title per stock code: the most frequent spelling (ties: alphabetical); the other
   spellings are kept in the description.

Every remaining row is a ``purchase`` event with ``value = Quantity``; all items of an invoice
share its timestamp and keep their file order (``seq``). ``InvoiceDate`` is UK local time and
is stored as UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.sources import Prepared
from training.data.tabular import read_tabular, require_columns

COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
           "CustomerID", "Country"]


def prepare(input: str) -> Prepared:
    table = read_tabular(input, {"InvoiceNo": pa.string(), "StockCode": pa.string(),
                                 "Description": pa.string(), "CustomerID": pa.string()},
                         what="Online Retail CSV")
    require_columns(table, COLUMNS, input)
    df = table.select(COLUMNS).to_pandas()
    df["seq"] = np.arange(len(df), dtype=np.int64)
    steps = [("rows read", len(df))]
    df = df[df["CustomerID"].notna() & (df["CustomerID"].str.strip() != "")]
    steps.append(("with a CustomerID", len(df)))
    df = df[~df["InvoiceNo"].str.upper().str.startswith("C")]
    steps.append(("not cancellations (InvoiceNo C...)", len(df)))
    df = df[df["Quantity"] > 0]
    steps.append(("Quantity > 0", len(df)))
    product = df["StockCode"].str.match(r"^\d{5}")
    dropped_codes = sorted(df.loc[~product, "StockCode"].unique().tolist())
    df = df[product]
    steps.append(("product stock codes", len(df)))
    if df.empty:
        raise DataError(f"{input}: no purchases left after cleaning")

    df["StockCode"] = df["StockCode"].str.upper()
    df["Description"] = df["Description"].fillna("").str.strip()
    spellings = (df[df["Description"] != ""].groupby(["StockCode", "Description"]).size()
                 .reset_index(name="n").sort_values(["StockCode", "n", "Description"],
                                                    ascending=[True, False, True]))
    title = spellings.drop_duplicates("StockCode").set_index("StockCode")["Description"]
    variants = spellings.groupby("StockCode")["Description"].agg(list)
    codes = np.sort(df["StockCode"].unique())
    item_index = pd.Series(np.arange(len(codes)), index=codes)
    price = df.groupby("StockCode")["UnitPrice"].median()
    n_multi = int((variants.str.len() > 1).sum())

    def describe(code: str) -> str | None:
        names = variants.get(code, [])
        return "; ".join(names[1:]) if len(names) > 1 else None

    items = pa.table({
        "item_id": np.arange(len(codes), dtype=np.int64),
        "external_id": codes.tolist(),
        "title": [title.get(c, c) for c in codes],
        "description": [describe(c) for c in codes],
        "attributes": [[f"code_family={c[:3]}"] for c in codes],
        "price": price.reindex(codes).to_numpy(dtype=np.float64),
    })
    customers = np.sort(df["CustomerID"].str.replace(r"\.0$", "", regex=True).unique())
    df["CustomerID"] = df["CustomerID"].str.replace(r"\.0$", "", regex=True)
    user_index = pd.Series(np.arange(len(customers)), index=customers)
    country = df.groupby("CustomerID")["Country"].agg(lambda s: s.value_counts().index[0])
    users = pa.table({
        "user_id": np.arange(len(customers), dtype=np.int64),
        "external_id": customers.tolist(),
        "attributes": [[f"country={country[c]}"] for c in customers],
    })
    ts = pd.to_datetime(df["InvoiceDate"], errors="coerce")
    if ts.isna().any():
        bad = df.loc[ts.isna(), "InvoiceDate"].iloc[0]
        raise DataError(f"{input}: column 'InvoiceDate' has a value that is not a date: {bad!r}")
    events = pa.table({
        "user_id": user_index.reindex(df["CustomerID"]).to_numpy(dtype=np.int64),
        "item_id": item_index.reindex(df["StockCode"]).to_numpy(dtype=np.int64),
        "timestamp": pa.array(ts.dt.tz_localize("UTC").to_numpy(dtype="datetime64[us]"),
                              type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(["purchase"] * len(df)),
        "value": df["Quantity"].to_numpy(dtype=np.float64),
        "seq": df["seq"].to_numpy(dtype=np.int64),
    })
    report = [f"{name}: {n:,} rows" for name, n in steps]
    report.append(f"dropped non-product stock codes: {', '.join(dropped_codes) or 'none'}")
    report.append(f"stock codes with several spellings: {n_multi} (most frequent kept as title)")
    report.append(f"result: {len(customers):,} customers, {len(codes):,} items, {len(df):,} purchases, "
                  f"{df['InvoiceNo'].nunique():,} invoices")
    ds = Dataset(items=items, users=users, events=events, source="online-retail",
                 splits={
                     "loo": {"kind": "loo", "dedupe": True},
                     "basket": {"kind": "loo", "dedupe": True, "basket": True},
                     "time": {"kind": "time", "dedupe": True, "valid_start": "2011-10-09",
                              "test_start": "2011-11-09"},
                     "cold": {"kind": "cold", "dedupe": True},
                 },
                 notes={"cleaning": dict(steps), "dropped_stock_codes": dropped_codes,
                        "multi_spelling_codes": n_multi, "invoices": int(df["InvoiceNo"].nunique())})
    return Prepared(ds, report=report)

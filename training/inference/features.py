"""Item features for the item tower, from a dataset and (optionally) content embeddings.

Plain numpy; no Ray. ``item_text`` is the single place that decides which item fields the text
encoder reads.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from training.data.interactions import Interactions
from training.models.retriever import ItemFeatures


def item_text(items: pa.Table) -> list[str]:
    """Title, description and attributes of each item as one string for the text encoder."""
    cols = {name: items[name].to_pylist() for name in ("title", "description", "category", "brand")}
    attrs = items["attributes"].to_pylist()
    out = []
    for i in range(items.num_rows):
        parts = [cols[k][i] for k in ("title", "brand", "category", "description") if cols[k][i]]
        if attrs[i]:
            parts.append(", ".join(a.replace("=", ": ") for a in attrs[i]))
        out.append(". ".join(parts))
    return out


def item_tags(items: pa.Table) -> list[list[str]]:
    """Each item's attribute tags; category and brand count as attributes too."""
    attrs = items["attributes"].to_pylist()
    cats, brands = items["category"].to_pylist(), items["brand"].to_pylist()
    rows = []
    for a, c, b in zip(attrs, cats, brands):
        tags = list(a or [])
        if c and not any(t.startswith("category=") for t in tags):
            tags.append(f"category={c}")
        if b and not any(t.startswith("brand=") for t in tags):
            tags.append(f"brand={b}")
        rows.append(tags)
    return rows


def attribute_ids(rows: list[list[str]], vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CSR ids of the tags in ``vocab``; tags outside it (new to a trained model) are dropped."""
    index = {t: i for i, t in enumerate(vocab)}
    kept = [[index[t] for t in r if t in index] for r in rows]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in kept])]).astype(np.int64)
    return indptr, np.array([i for r in kept for i in r], dtype=np.int64)


def attribute_vocabulary(items: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CSR attribute ids per item and the sorted tag vocabulary (see :func:`item_tags`)."""
    rows = item_tags(items)
    vocab = sorted({t for r in rows for t in r})
    indptr, ids = attribute_ids(rows, vocab)
    return indptr, ids, vocab


def build_item_features(items: pa.Table, train: Interactions, text: np.ndarray | None = None,
                        image: np.ndarray | None = None) -> ItemFeatures:
    """Items seen in ``train`` are *known* (they get an id embedding); the rest rely on content."""
    indptr, ids, vocab = attribute_vocabulary(items)
    known = train.item_counts() > 0
    return ItemFeatures(items.num_rows, known, indptr, ids, len(vocab), text, image)

"""Content features of items added after training (a new product goes live without a retrain).

``new_item_features(rows, model_doc, model_dir)`` turns catalogue rows (the dataset's ``items``
schema) into :class:`~training.models.retriever.ItemFeatures` for the trained item towers:
attribute ids in the model's vocabulary, text and image features from the same frozen encoders
the model was trained with (recorded in its ``model.json``). Plain PyTorch, no Ray.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import torch

from training import storage
from training.data.schema import ITEMS
from training.features import attribute_ids, item_tags, item_text
from training.modeldir import read_model_json
from training.models.retriever import ItemFeatures


def model_encoders(model_dir: str, doc: dict | None = None) -> dict:
    """``{"text": config dict or None, "image": ...}`` of a ranker or retriever directory (older
    ranker directories record them only in the retriever they rerank)."""
    doc = doc if doc is not None else read_model_json(model_dir)
    if "encoders" in doc:
        return doc["encoders"] or {}
    reranks = (doc.get("reranks") or {}).get("path")
    if reranks and storage.exists(storage.join(reranks, "model.json")):
        return read_model_json(reranks).get("encoders") or {}
    return {}


NEW_ITEM_FIELDS = pa.schema([(f.name, f.type) for f in ITEMS if f.name not in ("item_id",)])


def rows_table(records: list[dict]) -> pa.Table:
    """Catalogue rows (dicts with the ``items`` fields; missing ones null) as a table."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in NEW_ITEM_FIELDS} for r in records],
                                schema=NEW_ITEM_FIELDS)


class ContentEncoder:
    """Embeds new catalogue rows with the model's frozen encoders (loaded on first use)."""

    def __init__(self, attribute_vocab: list[str], encoders: dict, text_dim: int | None, image_dim: int | None):
        self.vocab, self.encoders = attribute_vocab, encoders or {}
        self.text_dim, self.image_dim = text_dim, image_dim
        self._text = self._image = None

    @property
    def text(self):
        if self._text is None and self.uses_text:
            from training.models.encoders import TextEncoder, TextEncoderConfig

            self._text = TextEncoder(TextEncoderConfig(**self.encoders["text"])).eval()
        return self._text

    @property
    def image(self):
        if self._image is None and self.uses_image:
            from training.models.encoders import ImageEncoder, ImageEncoderConfig

            self._image = ImageEncoder(ImageEncoderConfig(**self.encoders["image"])).eval()
        return self._image

    @property
    def uses_image(self) -> bool:
        return bool(self.image_dim and self.encoders.get("image"))

    @property
    def uses_text(self) -> bool:
        return bool(self.text_dim and self.encoders.get("text"))

    @torch.no_grad()
    def features(self, rows: pa.Table, image_root: str = "") -> ItemFeatures:
        n = rows.num_rows
        indptr, ids = attribute_ids(item_tags(rows), self.vocab)
        text = image = None
        if self.text_dim:
            text = (self.text.embed(item_text(rows)).float().numpy() if self.uses_text
                    else np.zeros((n, self.text_dim), np.float32))
        if self.image_dim:
            image = np.zeros((n, self.image_dim), np.float32)
            if self.uses_image:
                from PIL import Image

                for i, uri in enumerate(rows["image"].to_pylist()):
                    if uri:
                        path = uri if ("://" in uri or uri.startswith("/") or not image_root) else \
                            storage.join(image_root, uri)
                        pixels = self.image.preprocess(Image.open(io.BytesIO(storage.read_bytes(path))).convert("RGB"))
                        image[i] = self.image(pixels[None]).float().numpy()[0]
        return ItemFeatures(n, np.zeros(n, bool), indptr, ids, len(self.vocab), text, image)

    def usable(self, feats: ItemFeatures) -> list[int]:
        """Rows with content the model can read (a known attribute, text with a text encoder, an
        image with an image encoder); without any, every such item would get the same vector."""
        has_attr = np.diff(feats.attr_indptr) > 0
        has_image = (np.abs(feats.image).sum(1) > 0) if feats.image is not None and self.uses_image \
            else np.zeros(feats.num_items, bool)
        return [i for i in range(feats.num_items) if has_attr[i] or self.uses_text or has_image[i]]

"""Content features of items added after training (a new product goes live without a retrain).

:meth:`ContentEncoder.features` turns catalogue rows (the dataset's ``items`` schema, see
:func:`rows_table`) into :class:`~training.models.retriever.ItemFeatures` for the trained item towers:
attribute ids in the model's vocabulary, text and image features from the same frozen encoders
the model was trained with (recorded in its ``model.json``). Plain PyTorch, no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from training.data.schema import ITEMS
from training.inference.features import attribute_ids, item_tags, item_text
from training.models.retriever import ItemFeatures

if TYPE_CHECKING:  # the embedders (PIL, the encoder libraries) are imported on first use
    from training.inference.embed import ImageEmbedder, TextEmbedder

NEW_ITEM_FIELDS = pa.schema([(f.name, f.type) for f in ITEMS if f.name not in ("item_id",)])


def rows_table(records: list[dict]) -> pa.Table:
    """Catalogue rows (dicts with the ``items`` fields; missing ones null) as a table."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in NEW_ITEM_FIELDS} for r in records],
                                schema=NEW_ITEM_FIELDS)


class ContentEncoder:
    """Embeds new catalogue rows with the model's frozen encoders -- the same embedders that
    computed the catalogue's features (:mod:`training.inference.embed`), loaded on first use."""

    def __init__(self, attribute_vocab: list[str], encoders: dict, text_dim: int | None, image_dim: int | None,
                 read_image=None):
        self.vocab, self.encoders = attribute_vocab, encoders or {}
        self.read_image = read_image  # bytes of an image reference (default: storage.read_bytes)
        self.text_dim, self.image_dim = text_dim, image_dim
        self._text: TextEmbedder | None = None
        self._image: ImageEmbedder | None = None

    @property
    def uses_text(self) -> bool:
        return bool(self.text_dim and self.encoders.get("text"))

    @property
    def uses_image(self) -> bool:
        return bool(self.image_dim and self.encoders.get("image"))

    def _embed(self, kind: str, column: str, values: list) -> np.ndarray:
        from training.inference.embed import ImageEmbedder, TextEmbedder
        from training.models.encoders import ImageEncoderConfig, TextEncoderConfig

        if kind == "text" and self._text is None:
            self._text = TextEmbedder(TextEncoderConfig(**self.encoders["text"]))
        if kind == "image" and self._image is None:
            image = ImageEmbedder(ImageEncoderConfig(**self.encoders["image"]))
            if self.read_image is not None:  # set before it is shared: no read ever bypasses it
                image.read = self.read_image
            self._image = image
        embedder = self._text if kind == "text" else self._image
        if embedder is None:
            raise ValueError(f"unknown content kind {kind!r} (expected 'text' or 'image')")
        out = embedder({"item_id": np.arange(len(values)), column: values})["embedding"]
        return np.stack(out).astype(np.float32)

    def features(self, rows: pa.Table) -> ItemFeatures:
        n = rows.num_rows
        indptr, ids = attribute_ids(item_tags(rows), self.vocab)
        text = image = None
        if self.text_dim:  # a tower without its encoder here reads zeros, as for an item without text
            text = (self._embed("text", "text", item_text(rows)) if self.uses_text
                    else np.zeros((n, self.text_dim), np.float32))
        if self.image_dim:
            image = (self._embed("image", "uri", rows["image"].to_pylist()) if self.uses_image
                     else np.zeros((n, self.image_dim), np.float32))
        return ItemFeatures(n, np.zeros(n, bool), indptr, ids, len(self.vocab), text, image)

    def usable(self, rows: pa.Table) -> list[int]:
        """Rows with content the model can read (a known attribute, text with a text encoder, an
        image with an image encoder); without any, every such item would get the same vector.
        Decided from the rows alone: nothing is embedded."""
        indptr, _ = attribute_ids(item_tags(rows), self.vocab)
        images = rows["image"].to_pylist()
        return [i for i in range(rows.num_rows)
                if indptr[i + 1] > indptr[i] or self.uses_text or (self.uses_image and images[i])]

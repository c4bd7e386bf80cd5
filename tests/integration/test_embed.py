"""Content embeddings by Ray Data batch inference with the real pretrained encoders, cached."""

import numpy as np
import pytest

from training.common.errors import DataError
from training.data.dataset import load_dataset
from training.inference.embed import embed_items
from training.models.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)

pytestmark = pytest.mark.integration


def test_text_and_image_embeddings_are_computed_once_and_cached(ray_cluster, shared, tiny_dataset_dir, tmp_path):
    ds = load_dataset(tiny_dataset_dir)
    text_cfg = TextEncoderConfig(str(shared / "models/all-MiniLM-L6-v2"))
    text = embed_items(ds, "text", text_cfg, str(tmp_path / "cache"))
    assert text.shape == (ds.num_items, 384)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    # same as the encoder run directly, item by item
    from training.inference.features import item_text
    direct = TextEncoder(text_cfg).encode(item_text(ds.items)[:5])
    np.testing.assert_allclose(text[:5], direct, atol=1e-4)
    cached = list((tmp_path / "cache").glob("text-*.parquet"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = embed_items(ds, "text", text_cfg, str(tmp_path / "cache"))
    np.testing.assert_array_equal(text, again)
    assert cached[0].stat().st_mtime_ns == mtime  # read from the cache, not recomputed

    image = embed_items(ds, "image", ImageEncoderConfig(weights=str(shared / "models/mobilenet_v2-imagenet")),
                        str(tmp_path / "cache"))
    assert image.shape == (ds.num_items, 1280) and np.isfinite(image).all()
    # drawn images of the same colour and category look alike to the pretrained encoder
    attrs = ds.items["attributes"].to_pylist()
    key = [(a[0], a[1]) for a in attrs]  # category=..., colour=...
    sims = image @ image.T
    same = np.array([[key[i] == key[j] and i != j for j in range(len(key))] for i in range(len(key))])
    other = np.array([[key[i] != key[j] for j in range(len(key))] for i in range(len(key))])
    assert sims[same].mean() > sims[other].mean() + 0.05


def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        TextEncoder(TextEncoderConfig(str(tmp_path / "nope")))
    with pytest.raises(DataError, match="meta.json"):
        ImageEncoder(ImageEncoderConfig(weights=str(tmp_path)))

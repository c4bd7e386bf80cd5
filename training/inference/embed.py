"""Item content embeddings by Ray Data batch inference, cached as Parquet.

``embed_items`` runs the text encoder over every item's text and the image encoder over every
item's image with ``map_batches`` on an actor pool (each actor loads the encoder once; one GPU
per actor when ``use_gpu``). The result is cached under ``cache_dir`` with a key made of the
encoder configuration, the weights' identity and the exact inputs, so a rerun with the same
inputs reads the cache instead of recomputing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from training.common import storage
from training.data.dataset import Dataset
from training.inference.features import item_text
from training.models.encoders import ImageEncoder, TextEncoder

log = logging.getLogger(__name__)


class _EncoderActor:
    """A Ray Data actor that loads one encoder once and embeds batches with it."""

    encoder_cls: type

    def __init__(self, config, device: str = "cpu"):
        torch.set_num_threads(1)  # one CPU per actor
        self.encoder = self.encoder_cls(config).to(device).eval()
        self.device = device


class TextEmbedder(_EncoderActor):
    """``{"item_id", "text"} -> {"item_id", "embedding"}``."""

    encoder_cls = TextEncoder

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        emb = self.encoder.embed([str(t) for t in batch["text"]]).float().cpu().numpy()
        return {"item_id": batch["item_id"], "embedding": list(emb)}


class ImageEmbedder(_EncoderActor):
    """``{"item_id", "uri"} -> {"item_id", "embedding"}`` (zeros for items without an image)."""

    encoder_cls = ImageEncoder
    read = staticmethod(storage.read_bytes)  # how an image's bytes are read (serving: a capped, rooted reader)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        uris = list(batch["uri"])
        have = [i for i, u in enumerate(uris) if u]
        out = np.zeros((len(uris), self.encoder.dim), dtype=np.float32)
        if have:
            pixels = torch.stack([self.encoder.preprocess(Image.open(io.BytesIO(self.read(uris[i])))
                                                          .convert("RGB")) for i in have])
            out[have] = self.encoder(pixels.to(self.device)).float().cpu().numpy()
        return {"item_id": batch["item_id"], "embedding": list(out)}


def image_uris(dataset: Dataset) -> list[str | None]:
    root = str(dataset.root) if dataset.root else ""
    out: list[str | None] = []
    for rel in dataset.items["image"].to_pylist():
        if not rel:
            out.append(None)
        elif "://" in rel or rel.startswith("/"):
            out.append(rel)
        else:
            out.append(storage.join(root, rel))
    return out


def _weights_identity(path_or_name: str) -> str:
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".pth", ".bin", ".json"))
        return ";".join(f"{f.name}:{f.stat().st_size}" for f in files)
    return path_or_name


def _cache_key(kind: str, config, inputs: list) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "config": asdict(config),
                         "weights": _weights_identity(getattr(config, "name_or_path", None) or config.weights)},
                        sort_keys=True).encode())
    for x in inputs:
        h.update(b"\0" + (x or "").encode())
    return h.hexdigest()[:24]


def _run(kind: str, actor, config, rows: pa.Table, concurrency: int, batch_size: int, use_gpu: bool) -> np.ndarray:
    import ray
    import ray.data

    if not use_gpu:
        # each CPU actor holds a CPU for its lifetime; leave one for Ray Data's own tasks,
        # or a small cluster deadlocks (seen: 2 actors on a 2-CPU cluster never start)
        concurrency = max(1, min(concurrency, int(ray.cluster_resources().get("CPU", 2)) - 1))
    ds = ray.data.from_arrow(rows).repartition(max(concurrency * 2, 1))
    out = ds.map_batches(actor, fn_constructor_kwargs={"config": config, "device": "cuda" if use_gpu else "cpu"},
                         batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency),
                         num_gpus=1 if use_gpu else 0,
                         batch_format="numpy")
    table = out.to_pandas().sort_values("item_id")
    return np.stack(table["embedding"].to_numpy()).astype(np.float32)


def embed_items(dataset: Dataset, kind: str, config, cache_dir: str, concurrency: int = 2,
                batch_size: int = 64, use_gpu: bool = False) -> np.ndarray:
    """``(num_items, dim)`` content embeddings of ``kind`` ``'text'`` or ``'image'``, cached."""
    inputs: list[str] | list[str | None]
    actor: type[_EncoderActor]
    if kind == "text":
        inputs, actor, column = item_text(dataset.items), TextEmbedder, "text"
    else:
        inputs, actor, column = image_uris(dataset), ImageEmbedder, "uri"
    key = _cache_key(kind, config, inputs)
    path = storage.join(cache_dir, f"{kind}-{key}.parquet")
    if storage.exists(path):
        fs, p = storage.resolve(path)
        table = pq.read_table(p, filesystem=fs)
        log.info(f"  {kind} embeddings: cached ({path})")
        return np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    start = time.time()
    rows = pa.table({"item_id": np.arange(dataset.num_items, dtype=np.int64), column: inputs})
    emb = _run(kind, actor, config, rows, concurrency, batch_size, use_gpu)
    table = pa.table({"item_id": np.arange(dataset.num_items, dtype=np.int64),
                      "embedding": pa.array(list(emb), type=pa.list_(pa.float32()))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.atomic_write(path, sink.getvalue().to_pybytes())
    log.info(f"  {kind} embeddings: {dataset.num_items:,} items in {time.time() - start:.1f}s -> {path}")
    return emb

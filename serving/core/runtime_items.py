"""Items added at runtime, Ray-free: how the registry's stored records are loaded (stable
positions, quarantined placeholders) and how a served model applies them (per record, a record
that cannot be embedded is quarantined instead of failing the replica).

:class:`~serving.deploy.deployments.ItemRegistry` stores the records; the Retriever and Ranker replicas
each hold a :class:`ServedModel`.
"""

from __future__ import annotations

import json
import logging
import re
import threading

import pyarrow.fs as pafs

from serving.core.images import ImageRefused, ImageSource
from serving.core.index import VectorIndex
from serving.core.schemas import ModelSpec
from training.common import storage
from training.inference.modeldir import load_model, read_card
from training.inference.new_items import ContentEncoder, rows_table

log = logging.getLogger(__name__)


def load_registry(fs: pafs.FileSystem, root: str) -> tuple[list[dict], list[str]]:
    """The stored runtime items by position (see :class:`ItemRegistry`) and what was wrong."""
    found: dict[int, dict] = {}
    problems: list[str] = []
    for f in fs.get_file_info(pafs.FileSelector(root)):
        name = f.path.rsplit("/", 1)[-1]
        m = re.fullmatch(r"item-(\d{9})\.json", name)
        if not m:
            continue
        n = int(m.group(1))
        try:
            with fs.open_input_stream(f.path) as fh:
                rec = json.loads(fh.read(1 << 20))
            if not isinstance(rec, dict) or not isinstance(rec.get("item_id"), str):
                raise ValueError("no item_id")
            if rec.get("position", n) != n:
                raise ValueError(f"stored position {rec.get('position')} != file position {n}")
            found[n] = {**rec, "position": n}
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: unreadable ({str(exc)[:100]}); position {n} quarantined")
            found[n] = _placeholder(n, "unreadable record")
    records, seen = [], set()
    for n in range(max(found, default=-1) + 1):
        rec = found.get(n)
        if rec is None:
            problems.append(f"item-{n:09d}.json is missing; position {n} quarantined, later ids unchanged")
            rec = _placeholder(n, "missing record")
        elif not rec.get("quarantined") and rec["item_id"] in seen:
            problems.append(f"item-{n:09d}.json repeats item {rec['item_id']!r}; quarantined")
            rec = _placeholder(n, "duplicate item id")
        seen.add(rec["item_id"])
        records.append(rec)
    return records, problems


def _placeholder(n: int, why: str) -> dict:
    return {"item_id": f"(quarantined-{n})", "position": n, "quarantined": why}


class ServedModel:
    """One model version as a Retriever or Ranker replica holds it, plus the runtime items it has
    applied (their content vectors come from this model's own item towers)."""

    def __init__(self, spec: ModelSpec, images: ImageSource):
        card = read_card(spec.model_dir)
        self.pipeline = load_model(spec.model_dir, card)
        self.version = spec.model_version
        text_dim, image_dim = self.pipeline.content_dims()
        self.encoder = ContentEncoder(self.pipeline.vocab, card.encoders, text_dim, image_dim, read_image=images.read)
        self.applied = 0  # registry records applied
        self.images = images
        self.quarantined: set[int] = set()  # internal ids never recommended (see apply)
        self.index: VectorIndex | None = None

    def _unfit(self, record: dict) -> str | None:
        """Why a stored record is quarantined without trying it (it is not trusted: it may be
        older than today's checks, or edited)."""
        if record.get("quarantined"):
            return str(record["quarantined"])
        if record.get("image"):
            try:
                self.images.locate(str(record["image"]))
            except ImageRefused as exc:
                return str(exc)
        try:
            if not self.encoder.usable(rows_table([record])):
                return "no content this model reads"
        except Exception as exc:  # noqa: BLE001 -- a field of the wrong type
            return f"malformed record ({type(exc).__name__})"
        return None

    def embed(self, records: list[dict]):
        return self.encoder.features(rows_table(records))

    def apply(self, records: list[dict]) -> None:
        """Give the records vectors, in order. Per record: one that cannot be embedded (its image
        gone or refused, a placeholder of the registry) gets a content-free vector, is
        quarantined -- never recommended -- and logged; the others go on."""
        if not records:
            return
        bad = {i: why for i, r in enumerate(records) if (why := self._unfit(r))}

        def content() -> list[dict]:  # a quarantined record is embedded without its content
            return [{"item_id": r["item_id"]} if i in bad else r for i, r in enumerate(records)]

        try:
            feats = self.embed(content())
        except Exception:  # noqa: BLE001 -- find the record(s) at fault, one by one
            for i, r in enumerate(records):
                if i not in bad:
                    try:
                        self.embed([r])
                    except Exception as exc:  # noqa: BLE001
                        bad[i] = f"{type(exc).__name__}: {str(exc)[:200]}"
            try:
                feats = self.embed(content())
            except Exception as exc:  # noqa: BLE001 -- fails only together: none of them is served
                for i in range(len(records)):
                    bad.setdefault(i, f"embedding the batch failed ({type(exc).__name__})")
                feats = self.embed(content())  # ids only: nothing left to fail on
        start = self.pipeline.num_items
        rows = rows_table(content())
        vecs = self.pipeline.add_items(feats, rows["price"].to_numpy(zero_copy_only=False))
        for i, why in bad.items():
            self.quarantined.add(start + i)
            log.warning("runtime item %r (position %s) quarantined: %s", records[i]["item_id"],
                        records[i].get("position"), why)
        if self.index is not None:
            self.index.add(vecs)
        self.applied += len(records)


class ItemStore:
    """The items added at runtime, in order (item ``n`` gets internal id ``catalogue size + n``),
    each stored under ``root`` -- with its position, so ids are stable across restarts -- before
    it is acknowledged, and replayed on start (:func:`load_registry`: missing or unreadable
    positions become quarantined placeholders). Thread-safe; the single writer of its root."""

    def __init__(self, root: str):
        self.lock = threading.Lock()
        self.fs, self.root = storage.resolve(root)
        self.fs.create_dir(self.root, recursive=True)
        self.records, problems = load_registry(self.fs, self.root)
        for problem in problems:
            log.warning("item registry: %s", problem)
        self.ids = {r["item_id"] for r in self.records if not r.get("quarantined")}

    def add(self, record: dict) -> int:
        """Store ``record``; its position, or -1 when the id was already added."""
        with self.lock:
            if record["item_id"] in self.ids:
                return -1
            n = len(self.records)
            stored = {**record, "position": n}
            path = f"{self.root}/item-{n:09d}.json"
            storage.write_durably(self.fs, path + ".tmp", path, json.dumps(stored).encode())
            self.records.append(stored)
            self.ids.add(record["item_id"])
            return n

    def since(self, n: int) -> list[dict]:
        with self.lock:
            return self.records[n:]

